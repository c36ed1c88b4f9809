"""The Oxide API seen from the driver: domain types, the ``OxideApi`` protocol, errors, and the
HTTP client that implements it."""
