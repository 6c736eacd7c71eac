"""``choreo console``: a web console for operators, served by the runtime.

- ``model``: what a page shows, built from stored messages without any I/O (timelines, saga
  summaries, decoded payloads);
- ``svg``: the path one saga took, drawn as inline SVG;
- ``reads``: the JetStream reads behind the pages (each a filtered read that costs what it
  returns);
- ``views``: server-rendered HTML, no scripts or assets from anywhere else;
- ``server``: the aiohttp application (HTML pages and the JSON API) and ``choreo console``.
"""
