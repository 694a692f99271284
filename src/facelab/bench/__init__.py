"""Benchmarks (`facelab bench NAME`): each module registers a runner that sweeps sizes, prints a table and
writes CSV rows (device, torch version, batch, ms, items/s, peak memory)."""
