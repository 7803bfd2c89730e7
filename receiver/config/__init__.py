"""Which Receivers the ingress serves, and with which secrets: the one home of Receiver
configuration on the receiver's side.

- ``spec``: one Receiver as served (the parsed Flux manifest, its resolved Secret, the hook
  path digest from ``hooks``, the allow-list, and the token ``rotation`` it may be in);
- ``table``: every served hook path, swapped whole on each reload;
- ``sources``: where tables come from (a YAML file reloaded on change or SIGHUP);
  ``kubernetes``: the same, read live from the Kubernetes API.

Verifying a request against a Receiver's credentials happens in ``receiver.ingress`` with
``rotation.verify``; providers never see this package.
"""
