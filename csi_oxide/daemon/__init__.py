"""The serving process's plumbing: logging, metrics, the readiness cache, the small HTTP listener
and the per-volume in-flight guard."""
