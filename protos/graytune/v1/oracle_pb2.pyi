from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DataType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DATA_TYPE_UNSPECIFIED: _ClassVar[DataType]
    FLOAT32: _ClassVar[DataType]
    FLOAT16: _ClassVar[DataType]
    BFLOAT16: _ClassVar[DataType]
    UINT8: _ClassVar[DataType]
    INT64: _ClassVar[DataType]

class Tower(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TOWER_UNSPECIFIED: _ClassVar[Tower]
    IMAGE: _ClassVar[Tower]
    TEXT: _ClassVar[Tower]
DATA_TYPE_UNSPECIFIED: DataType
FLOAT32: DataType
FLOAT16: DataType
BFLOAT16: DataType
UINT8: DataType
INT64: DataType
TOWER_UNSPECIFIED: Tower
IMAGE: Tower
TEXT: Tower

class TensorChunk(_message.Message):
    __slots__ = ("name", "dtype", "shape", "data")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    name: str
    dtype: DataType
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    def __init__(self, name: _Optional[str] = ..., dtype: _Optional[_Union[DataType, str]] = ..., shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ...) -> None: ...

class InputHeader(_message.Message):
    __slots__ = ("tower", "texts", "output_dtype", "grad_inputs", "prompt_template", "pixel_adapter")
    TOWER_FIELD_NUMBER: _ClassVar[int]
    TEXTS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_DTYPE_FIELD_NUMBER: _ClassVar[int]
    GRAD_INPUTS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    PIXEL_ADAPTER_FIELD_NUMBER: _ClassVar[int]
    tower: Tower
    texts: _containers.RepeatedScalarFieldContainer[str]
    output_dtype: DataType
    grad_inputs: _containers.RepeatedScalarFieldContainer[str]
    prompt_template: str
    pixel_adapter: PixelAdapterSpec
    def __init__(self, tower: _Optional[_Union[Tower, str]] = ..., texts: _Optional[_Iterable[str]] = ..., output_dtype: _Optional[_Union[DataType, str]] = ..., grad_inputs: _Optional[_Iterable[str]] = ..., prompt_template: _Optional[str] = ..., pixel_adapter: _Optional[_Union[PixelAdapterSpec, _Mapping]] = ...) -> None: ...

class PixelAdapterSpec(_message.Message):
    __slots__ = ("layers", "channels", "kernel_size")
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    KERNEL_SIZE_FIELD_NUMBER: _ClassVar[int]
    layers: int
    channels: int
    kernel_size: int
    def __init__(self, layers: _Optional[int] = ..., channels: _Optional[int] = ..., kernel_size: _Optional[int] = ...) -> None: ...

class PixelAdapterLimits(_message.Message):
    __slots__ = ("max_layers", "max_channels", "max_kernel_size")
    MAX_LAYERS_FIELD_NUMBER: _ClassVar[int]
    MAX_CHANNELS_FIELD_NUMBER: _ClassVar[int]
    MAX_KERNEL_SIZE_FIELD_NUMBER: _ClassVar[int]
    max_layers: int
    max_channels: int
    max_kernel_size: int
    def __init__(self, max_layers: _Optional[int] = ..., max_channels: _Optional[int] = ..., max_kernel_size: _Optional[int] = ...) -> None: ...

class InputMessage(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: InputHeader
    chunk: TensorChunk
    def __init__(self, header: _Optional[_Union[InputHeader, _Mapping]] = ..., chunk: _Optional[_Union[TensorChunk, _Mapping]] = ...) -> None: ...

class OutputHeader(_message.Message):
    __slots__ = ("handle", "handle_ttl_seconds", "device_seconds")
    HANDLE_FIELD_NUMBER: _ClassVar[int]
    HANDLE_TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    DEVICE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    handle: str
    handle_ttl_seconds: float
    device_seconds: float
    def __init__(self, handle: _Optional[str] = ..., handle_ttl_seconds: _Optional[float] = ..., device_seconds: _Optional[float] = ...) -> None: ...

class OutputMessage(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: OutputHeader
    chunk: TensorChunk
    def __init__(self, header: _Optional[_Union[OutputHeader, _Mapping]] = ..., chunk: _Optional[_Union[TensorChunk, _Mapping]] = ...) -> None: ...

class BackwardHeader(_message.Message):
    __slots__ = ("handle", "output_dtype")
    HANDLE_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_DTYPE_FIELD_NUMBER: _ClassVar[int]
    handle: str
    output_dtype: DataType
    def __init__(self, handle: _Optional[str] = ..., output_dtype: _Optional[_Union[DataType, str]] = ...) -> None: ...

class BackwardMessage(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: BackwardHeader
    chunk: TensorChunk
    def __init__(self, header: _Optional[_Union[BackwardHeader, _Mapping]] = ..., chunk: _Optional[_Union[TensorChunk, _Mapping]] = ...) -> None: ...

class DescribeRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Backbone(_message.Message):
    __slots__ = ("name", "sha256")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    name: str
    sha256: str
    def __init__(self, name: _Optional[str] = ..., sha256: _Optional[str] = ...) -> None: ...

class ImageSpec(_message.Message):
    __slots__ = ("height", "width", "mean", "std", "interpolation", "resize_mode", "token_width", "deep_prompt_layers", "pixel_adapter")
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    MEAN_FIELD_NUMBER: _ClassVar[int]
    STD_FIELD_NUMBER: _ClassVar[int]
    INTERPOLATION_FIELD_NUMBER: _ClassVar[int]
    RESIZE_MODE_FIELD_NUMBER: _ClassVar[int]
    TOKEN_WIDTH_FIELD_NUMBER: _ClassVar[int]
    DEEP_PROMPT_LAYERS_FIELD_NUMBER: _ClassVar[int]
    PIXEL_ADAPTER_FIELD_NUMBER: _ClassVar[int]
    height: int
    width: int
    mean: _containers.RepeatedScalarFieldContainer[float]
    std: _containers.RepeatedScalarFieldContainer[float]
    interpolation: str
    resize_mode: str
    token_width: int
    deep_prompt_layers: int
    pixel_adapter: PixelAdapterLimits
    def __init__(self, height: _Optional[int] = ..., width: _Optional[int] = ..., mean: _Optional[_Iterable[float]] = ..., std: _Optional[_Iterable[float]] = ..., interpolation: _Optional[str] = ..., resize_mode: _Optional[str] = ..., token_width: _Optional[int] = ..., deep_prompt_layers: _Optional[int] = ..., pixel_adapter: _Optional[_Union[PixelAdapterLimits, _Mapping]] = ...) -> None: ...

class TextSpec(_message.Message):
    __slots__ = ("context_length", "token_width", "vocab_size", "max_extra_tokens", "deep_prompt_layers", "prompt_templates")
    CONTEXT_LENGTH_FIELD_NUMBER: _ClassVar[int]
    TOKEN_WIDTH_FIELD_NUMBER: _ClassVar[int]
    VOCAB_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_EXTRA_TOKENS_FIELD_NUMBER: _ClassVar[int]
    DEEP_PROMPT_LAYERS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TEMPLATES_FIELD_NUMBER: _ClassVar[int]
    context_length: int
    token_width: int
    vocab_size: int
    max_extra_tokens: int
    deep_prompt_layers: int
    prompt_templates: _containers.RepeatedCompositeFieldContainer[PromptTemplate]
    def __init__(self, context_length: _Optional[int] = ..., token_width: _Optional[int] = ..., vocab_size: _Optional[int] = ..., max_extra_tokens: _Optional[int] = ..., deep_prompt_layers: _Optional[int] = ..., prompt_templates: _Optional[_Iterable[_Union[PromptTemplate, _Mapping]]] = ...) -> None: ...

class PromptTemplate(_message.Message):
    __slots__ = ("name", "context_tokens")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    name: str
    context_tokens: int
    def __init__(self, name: _Optional[str] = ..., context_tokens: _Optional[int] = ...) -> None: ...

class Limits(_message.Message):
    __slots__ = ("max_batch", "max_tensor_bytes", "max_message_bytes", "chunk_bytes", "max_graph_bytes", "handle_ttl_seconds", "max_deep_prompt_tokens", "max_call_seconds", "max_caption_bytes", "max_context_rows", "max_calls_per_key", "min_upload_bytes_per_second", "upload_grace_seconds", "max_graph_bytes_per_key")
    MAX_BATCH_FIELD_NUMBER: _ClassVar[int]
    MAX_TENSOR_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    CHUNK_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_GRAPH_BYTES_FIELD_NUMBER: _ClassVar[int]
    HANDLE_TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MAX_DEEP_PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_CALL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MAX_CAPTION_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_CONTEXT_ROWS_FIELD_NUMBER: _ClassVar[int]
    MAX_CALLS_PER_KEY_FIELD_NUMBER: _ClassVar[int]
    MIN_UPLOAD_BYTES_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    UPLOAD_GRACE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MAX_GRAPH_BYTES_PER_KEY_FIELD_NUMBER: _ClassVar[int]
    max_batch: int
    max_tensor_bytes: int
    max_message_bytes: int
    chunk_bytes: int
    max_graph_bytes: int
    handle_ttl_seconds: float
    max_deep_prompt_tokens: int
    max_call_seconds: float
    max_caption_bytes: int
    max_context_rows: int
    max_calls_per_key: int
    min_upload_bytes_per_second: float
    upload_grace_seconds: float
    max_graph_bytes_per_key: int
    def __init__(self, max_batch: _Optional[int] = ..., max_tensor_bytes: _Optional[int] = ..., max_message_bytes: _Optional[int] = ..., chunk_bytes: _Optional[int] = ..., max_graph_bytes: _Optional[int] = ..., handle_ttl_seconds: _Optional[float] = ..., max_deep_prompt_tokens: _Optional[int] = ..., max_call_seconds: _Optional[float] = ..., max_caption_bytes: _Optional[int] = ..., max_context_rows: _Optional[int] = ..., max_calls_per_key: _Optional[int] = ..., min_upload_bytes_per_second: _Optional[float] = ..., upload_grace_seconds: _Optional[float] = ..., max_graph_bytes_per_key: _Optional[int] = ...) -> None: ...

class Charges(_message.Message):
    __slots__ = ("per_image", "per_caption", "per_context", "per_gradient_row")
    PER_IMAGE_FIELD_NUMBER: _ClassVar[int]
    PER_CAPTION_FIELD_NUMBER: _ClassVar[int]
    PER_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    PER_GRADIENT_ROW_FIELD_NUMBER: _ClassVar[int]
    per_image: int
    per_caption: int
    per_context: int
    per_gradient_row: int
    def __init__(self, per_image: _Optional[int] = ..., per_caption: _Optional[int] = ..., per_context: _Optional[int] = ..., per_gradient_row: _Optional[int] = ...) -> None: ...

class DescribeResponse(_message.Message):
    __slots__ = ("protocol_version", "server_version", "backbone", "embed_dim", "image", "text", "tier", "entry_points", "limits", "caller_id", "budget_samples", "budget_remaining", "rate_per_second", "rate_limit_scope", "gradient_budget_samples", "gradient_budget_remaining", "gradient_clip_norm", "gradient_noise_std", "gradients", "charges", "pixel_gradients")
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    SERVER_VERSION_FIELD_NUMBER: _ClassVar[int]
    BACKBONE_FIELD_NUMBER: _ClassVar[int]
    EMBED_DIM_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    ENTRY_POINTS_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    CALLER_ID_FIELD_NUMBER: _ClassVar[int]
    BUDGET_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    BUDGET_REMAINING_FIELD_NUMBER: _ClassVar[int]
    RATE_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    RATE_LIMIT_SCOPE_FIELD_NUMBER: _ClassVar[int]
    GRADIENT_BUDGET_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    GRADIENT_BUDGET_REMAINING_FIELD_NUMBER: _ClassVar[int]
    GRADIENT_CLIP_NORM_FIELD_NUMBER: _ClassVar[int]
    GRADIENT_NOISE_STD_FIELD_NUMBER: _ClassVar[int]
    GRADIENTS_FIELD_NUMBER: _ClassVar[int]
    CHARGES_FIELD_NUMBER: _ClassVar[int]
    PIXEL_GRADIENTS_FIELD_NUMBER: _ClassVar[int]
    protocol_version: str
    server_version: str
    backbone: Backbone
    embed_dim: int
    image: ImageSpec
    text: TextSpec
    tier: str
    entry_points: _containers.RepeatedScalarFieldContainer[str]
    limits: Limits
    caller_id: str
    budget_samples: int
    budget_remaining: int
    rate_per_second: float
    rate_limit_scope: str
    gradient_budget_samples: int
    gradient_budget_remaining: int
    gradient_clip_norm: float
    gradient_noise_std: float
    gradients: bool
    charges: Charges
    pixel_gradients: bool
    def __init__(self, protocol_version: _Optional[str] = ..., server_version: _Optional[str] = ..., backbone: _Optional[_Union[Backbone, _Mapping]] = ..., embed_dim: _Optional[int] = ..., image: _Optional[_Union[ImageSpec, _Mapping]] = ..., text: _Optional[_Union[TextSpec, _Mapping]] = ..., tier: _Optional[str] = ..., entry_points: _Optional[_Iterable[str]] = ..., limits: _Optional[_Union[Limits, _Mapping]] = ..., caller_id: _Optional[str] = ..., budget_samples: _Optional[int] = ..., budget_remaining: _Optional[int] = ..., rate_per_second: _Optional[float] = ..., rate_limit_scope: _Optional[str] = ..., gradient_budget_samples: _Optional[int] = ..., gradient_budget_remaining: _Optional[int] = ..., gradient_clip_norm: _Optional[float] = ..., gradient_noise_std: _Optional[float] = ..., gradients: _Optional[bool] = ..., charges: _Optional[_Union[Charges, _Mapping]] = ..., pixel_gradients: _Optional[bool] = ...) -> None: ...
