"""The IPVS service proxy plugin: Services and EndpointSlices into IPVS on every node."""
