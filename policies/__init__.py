"""The shipped routing policies and price file (installed as the package `gateway_policies`)."""
