-- One database per service: a service never reads another's state.
CREATE DATABASE choreo_order;
CREATE DATABASE choreo_inventory;
CREATE DATABASE choreo_payment;
CREATE DATABASE choreo_shipping;
CREATE DATABASE choreo_notification;
