"""choreo: a runtime for choreographed sagas over NATS JetStream.

In a checkout, the runtime's own generated module (``choreo.choreography.v1``, the options a
contract is written with) lives in ``gen/python/choreo``; extending ``__path__`` finds it there.
The wheel carries it inside this package. Contracts of a system (the reference shop's
``shop.order.v1`` and friends) are packages of their own.
"""

import pkgutil

__path__ = pkgutil.extend_path(__path__, __name__)

__version__ = "0.1.0"
