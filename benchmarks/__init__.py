"""Side-by-side benchmarks of Cargohold and CNCF Distribution (``python -m benchmarks.run``)."""
