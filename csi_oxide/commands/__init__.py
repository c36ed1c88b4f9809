"""The command line's helpers beside ``serve``: ``doctor`` (set-up checks) and ``static-pv`` (a
PersistentVolume for an operator's disk)."""
