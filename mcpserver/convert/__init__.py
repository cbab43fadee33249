"""Pure conversion from registry-neutral services to Istio resources; no I/O."""
