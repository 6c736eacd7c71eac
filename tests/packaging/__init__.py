"""Packaging: the runtime wheel, built and installed as a user would.

The tests here use examples/loyalty as "another team's" service; importing ``tests.examples``
puts its package and generated code on the path first.
"""

import tests.examples  # noqa: F401
