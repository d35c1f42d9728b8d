"""Operator tools behind the command line (`spiritserve bench-components`, `check-precision`, `check-batching`,
`chat`, `soak`): they drive the stages or a running server from outside. The server never imports them."""
