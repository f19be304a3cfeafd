"""The simulator's non-streamed answers in vLLM 0.32's JSON shapes (key order included):
chat and text completions, ``/v1/models`` and ``/tokenize``."""

from __future__ import annotations

import hashlib

import msgspec

from vllm_sim.config import SimConfig
from vllm_sim.text import Generated

__all__ = ["SYSTEM_FINGERPRINT", "VLLM_VERSION", "completion_body", "models_body", "tokenize_body"]

VLLM_VERSION = "0.32.0"
SYSTEM_FINGERPRINT = "vllm-0.32.0-sim"


def completion_body(
    chat: bool,
    rid: bytes,
    created: int,
    model: str,
    gens: list[Generated],
    prompt_tokens: int,
    completion_tokens: int,
) -> bytes:
    """A whole ``chat.completion`` (``chat``) or ``text_completion`` response."""
    usage = {
        "prompt_tokens": prompt_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "completion_tokens": completion_tokens,
        "prompt_tokens_details": None,
        "completion_tokens_details": None,
    }
    if chat:
        return msgspec.json.encode(
            {
                "id": rid.decode(),
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [
                    {
                        "index": i,
                        "message": {
                            "role": "assistant",
                            "content": g.text,
                            "refusal": None,
                            "annotations": None,
                            "audio": None,
                            "function_call": None,
                            "reasoning": None,
                        },
                        "logprobs": None,
                        "finish_reason": g.finish_reason,
                        "stop_reason": g.stop_reason,
                        "token_ids": None,
                        "routed_experts": None,
                    }
                    for i, g in enumerate(gens)
                ],
                "service_tier": None,
                "system_fingerprint": SYSTEM_FINGERPRINT,
                "usage": usage,
                "prompt_logprobs": None,
                "prompt_token_ids": None,
                "prompt_text": None,
                "kv_transfer_params": None,
                "ec_transfer_params": None,
                "metrics": None,
            }
        )
    return msgspec.json.encode(
        {
            "id": rid.decode(),
            "object": "text_completion",
            "created": created,
            "model": model,
            "choices": [
                {
                    "index": i,
                    "text": g.text,
                    "logprobs": None,
                    "finish_reason": g.finish_reason,
                    "stop_reason": g.stop_reason,
                    "token_ids": None,
                    "prompt_logprobs": None,
                    "prompt_token_ids": None,
                    "routed_experts": None,
                }
                for i, g in enumerate(gens)
            ],
            "service_tier": None,
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "usage": usage,
            "kv_transfer_params": None,
            "ec_transfer_params": None,
            "metrics": None,
        }
    )


def models_body(config: SimConfig, created: int) -> bytes:
    """``/v1/models``: the one served model."""
    perm = hashlib.blake2b(config.model.encode(), digest_size=8).hexdigest()
    body = {
        "object": "list",
        "data": [
            {
                "id": config.model,
                "object": "model",
                "created": created,
                "owned_by": "vllm",
                "root": config.model_root if config.model_root is not None else config.model,
                "parent": None,
                "max_model_len": config.max_model_len,
                "permission": [
                    {
                        "id": f"modelperm-{perm}",
                        "object": "model_permission",
                        "created": created,
                        "allow_create_engine": False,
                        "allow_sampling": True,
                        "allow_logprobs": True,
                        "allow_search_indices": False,
                        "allow_view": True,
                        "allow_fine_tuning": False,
                        "organization": "*",
                        "group": None,
                        "is_blocking": False,
                    }
                ],
            }
        ],
    }
    return msgspec.json.encode(body)


def tokenize_body(tokens: list[int], max_model_len: int, token_strs: list[str] | None) -> bytes:
    return msgspec.json.encode(
        {"count": len(tokens), "max_model_len": max_model_len, "tokens": tokens, "token_strs": token_strs}
    )
