"""A simulated rack whose local instance is a real Linux guest under qemu (NVMe hot-plug)."""
