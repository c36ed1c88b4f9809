"""Controller logic: provisioning, attachment, snapshots over the OxideApi seam."""
