"""The hotels service: books a room for each trip whose seat is held, or says there is none."""
