"""Tests of the simulated Oxide API (csi_oxide_lab.sim)."""
