"""graytune: gray-box fine-tuning of vision-language models through a gradient oracle.

`graytune.v1` is the wire contract (generated from protos/graytune/v1/oracle.proto),
`graytune.tensor_codec` turns tensors into chunks and back, `graytune.error_details` writes and
reads why a limit refused a call, `graytune.server` is the model owner's side and
`graytune.client` the customer's.
"""

__version__ = "0.2.0"
# Major: bumped when the meaning of a message changes; clients refuse a server with another.
# Minor: fields or inputs added (1.1: deep prompts, the call-time limit; 1.2: the caption
# limit, gradient budgets and gradient protection in Describe, the call-id header; 1.3: whether
# the caller may differentiate, in Describe; 1.4: a limit's refusal says which limit and when to
# retry, in google.rpc error details).
PROTOCOL_VERSION = "1.4"
