"""The worker side of adapter serving: everything that runs inside each vLLM worker process.

A request's routing arrives here as `SamplingParams.extra_args` and is followed in this package only:

- `plugin`: vLLM's general plugin; installs the adapted layers when a worker's model loads.
- `extension`: the worker's RPC methods (load, move, unload set versions) and the installation.
- `residency`: which set version sits in which bank slot, host copies, each step's routing.
- `step_routing`: a step's rows per method, slot and task row, built once per step on the host.
- `adapted_linear`: the layer that wraps vLLM's fused linears and runs each method's bank.

vLLM internals are reached through `server.engine.vllm.worker` only.
"""
