"""Scripts that train the built-in demo models reproducibly (`python -m complab.demo.train`)."""
