"""The Kubernetes API seen from the driver: a small synchronous client over the standard library
(``client``), leader election on a Lease (``lease``) and the node's startup taint (``taint``)."""
