"""MAC counting with fvcore and ptflops (`counting`), the per-model table (`macs`)."""
