"""The lab around the driver: shipped in the same distribution, but no part of the driver.

- ``sim``: the simulated Oxide rack (the API, its model and its backings: files, loop devices, or
  a qemu guest whose NVMe disks are hot-plugged, ``sim.guest_backing``);
- ``guest``: the qemu guest machinery (the VM, QMP, the virtio-serial bridge and tether);
- ``demo``: the embedded default, one volume through its whole life;
- ``harness``: the simulator, the driver and csi-sanity as real processes;
- ``testing``: the driver against an in-process simulator, for tests, benchmarks and scripts.

The driver (``csi_oxide``) imports nothing from here; its command line hands ``csi-oxide sim``
and ``csi-oxide demo`` over to this package (``tests/test_layers.py`` keeps it so).
"""
