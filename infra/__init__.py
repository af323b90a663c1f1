"""The Pulumi program behind ``pulumi up``: network, storage and compute for stage 1.

``infra/__main__.py`` is the program Pulumi runs (``main: infra/`` in ``Pulumi.yaml``); it reads
the typed stack config (:mod:`infra.config`), wires one component per concern
(:mod:`infra.network`, :mod:`infra.identity` — the two roles, planned first because the bucket
key's policy names them —, :mod:`infra.storage`, :mod:`infra.compute`, :mod:`infra.controller`)
and exports the stack outputs other tools read. Policy documents, hardware facts and node user
data are pure functions (:mod:`infra.policies`, :mod:`infra.controller_policy`, :mod:`infra.egress`,
:mod:`infra.efa`, :mod:`infra.userdata`) so they are tested without the engine.

- ``policies``: IAM and bucket policy documents — the nodes' role, what both roles share (trust,
  the SSM agent's calls, action lists, ARN checks), the bucket's TLS-only rule.
- ``controller_policy``: the controller's role (this group, this cluster's instances, the
  project's Run Command document, the bucket).
- ``efa``: EFA interfaces per instance type, validated against every allowed type.
- ``egress``: what the machines may reach (interface endpoints, the S3 endpoint's policy, the
  bucket's ``aws:SourceVpce`` rule, the KMS key policy) and the endpoint-vs-NAT cost.
- ``wheelhouse``: the nodes' hash-locked lock file and wheelhouse (build, pack, pin).
- ``run_document``: the project's SSM Command document, the only one the controller may send.
- ``cli``: ``invoke lock-node``, ``invoke wheelhouse``.
"""
