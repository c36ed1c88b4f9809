"""What the controller and the node agree on, pure rules without I/O: volume and node IDs, the
publish context, mount options and Oxide's own naming rules."""
