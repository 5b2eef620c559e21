"""Fleet releases on the device: signed releases over MQTT, tried on canaries, promoted or rolled back here.

- ``config``: the ``[fleet]`` table.
- ``record``: the signed release record, chunks, verdicts and their topics (what publisher and devices share).
- ``archive``: a bundle as one tar, and taken apart safely.
- ``store``: what the device keeps on disk (state, chunks, two versions), crash-safe and bounded.
- ``judge``: the rollout's rules as pure functions (canary membership, promotion, when the rest follow).
- ``host``: what the agent needs from the runtime (implemented by serving/fleet_host.py).
- ``transport``: the agent's own MQTT connection.
- ``agent``: the agent itself, on a thread of its own.

Nothing is imported here: ``edge_runtime.config`` reads ``fleet.config``, and the agent needs the config.
"""
