"""graytune: gray-box fine-tuning of vision-language models through a gradient oracle.

`graytune.v1` is the wire contract (generated from protos/graytune/v1/oracle.proto) and
`graytune.contract` its words outside the messages (headers, entry points, tiers, version);
`graytune.tensor_codec` turns tensors into chunks and back, `graytune.error_details` writes and
reads why a limit refused a call, `graytune.openmp` lets a process that waits on a server keep
its idle threads off the cores, `graytune.server` is the model owner's side and
`graytune.client` the customer's.
"""

from graytune.contract import PROTOCOL_VERSION  # re-exported: graytune.PROTOCOL_VERSION

__version__ = "0.3.0"  # the package's; CHANGELOG.md has each version's changes
__all__ = ["PROTOCOL_VERSION", "__version__"]
