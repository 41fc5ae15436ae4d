"""rime-trio: a Trio-native, structured-concurrency client for Rime text-to-speech."""

from ._audio import wav_header, write_wav
from ._client import Capabilities, RimeClient, SynthesisChunks, SynthesisResult, list_voices
from ._errors import (
    APIStatusError,
    ConfigurationError,
    ConnectError,
    ConnectionLost,
    EmptyTextError,
    InvalidTextError,
    ProtocolError,
    RimeConnectionError,
    RimeDeprecationWarning,
    RimeError,
    RimeTimeoutError,
    ServerError,
    SlowReaderError,
    StreamClosed,
)
from ._events import AudioChunk, SpeechEvent, WordTimestamp
from ._metrics import StreamMetrics, SynthesisMetrics
from ._options import (
    DEFAULT_HTTP_URL,
    DEFAULT_WS_URL,
    AudioFormat,
    Model,
    Region,
    RimeOptions,
    Segment,
    StreamProtocol,
    model_params,
)
from ._pool import PoolSettings, PoolStats
from ._segment import SentenceSplitter, Tokenizer
from ._stream import EndOfAudio, SpeechStream
from ._stream_tasks import StreamSettings
from ._version import __version__
from ._voices import Voice

__all__ = [
    "DEFAULT_HTTP_URL",
    "DEFAULT_WS_URL",
    "APIStatusError",
    "AudioChunk",
    "AudioFormat",
    "Capabilities",
    "ConfigurationError",
    "ConnectError",
    "ConnectionLost",
    "EmptyTextError",
    "EndOfAudio",
    "InvalidTextError",
    "Model",
    "PoolSettings",
    "PoolStats",
    "ProtocolError",
    "Region",
    "RimeClient",
    "RimeConnectionError",
    "RimeDeprecationWarning",
    "RimeError",
    "RimeOptions",
    "RimeTimeoutError",
    "Segment",
    "SentenceSplitter",
    "ServerError",
    "SlowReaderError",
    "SpeechEvent",
    "SpeechStream",
    "StreamClosed",
    "StreamMetrics",
    "StreamProtocol",
    "StreamSettings",
    "SynthesisChunks",
    "SynthesisMetrics",
    "SynthesisResult",
    "Tokenizer",
    "Voice",
    "WordTimestamp",
    "__version__",
    "list_voices",
    "model_params",
    "wav_header",
    "write_wav",
]
