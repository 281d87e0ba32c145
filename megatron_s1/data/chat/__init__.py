"""Chat SFT data: Qwen3 / Intern-S1 formatting with assistant masks, system-prompt isolation, mixtures."""
from megatron_s1.data.chat.format import (ChatFormatError, ChatTokenizer, Formatted, JinjaFormatter, Media,
                                          apply_system_prefix, format_qwen3, load_chat_template)
from megatron_s1.data.chat.mixture import Mixture, parse_specs, read_conversations

__all__ = ["ChatFormatError", "ChatTokenizer", "Formatted", "JinjaFormatter", "Media", "Mixture",
           "apply_system_prefix", "format_qwen3", "load_chat_template", "parse_specs", "read_conversations"]
