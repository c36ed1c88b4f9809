"""Tests of the simulated Oxide API (csi_oxide.sim)."""
