"""choreo: a runtime for choreographed sagas over NATS JetStream.

The generated Protobuf modules (``choreo.order.v1`` and friends) live in ``gen/python/choreo``;
extending ``__path__`` lets them share this top-level package name with the runtime.
"""

import pkgutil

__path__ = pkgutil.extend_path(__path__, __name__)

__version__ = "0.1.0"
