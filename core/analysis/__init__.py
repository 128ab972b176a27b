"""Analysis on cached features: scores (NMI, probes), 2-D layouts, sweeps and the Explore view."""
