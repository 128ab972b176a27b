"""Datasets: DomainBed folders, CSV manifests and the built-in sets (scanning, validation, image decoding)."""
