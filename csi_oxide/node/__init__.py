"""The node's data path: find the attached disk, check it, format only when blank, mount, grow."""
