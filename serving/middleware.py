"""HTTP middleware `tokencomp serve` adds to vLLM's API server (`--middleware`): request-level checks and the
per-request record of what was served.

- Every `/v1` POST's `mm_processor_kwargs` is validated, with or without images: vLLM never runs the
  multimodal processor for a text-only request, so a bad `tokencomp` object there would otherwise pass.
- A model TokenComp cannot compress answers 400 to any method but `none`, naming its model type.
- Counters and the log line are written when a chat completion is answered 2xx, so start-up warm-up and
  requests refused after their image was processed (max_tokens 0, prompt too long, ...) are not counted.

Requests without a valid API key pass through untouched, so vLLM's authentication answers them first.
"""

from __future__ import annotations

import json
import logging

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from vllm import envs
from vllm.entrypoints.serve.middleware.authenticate import AuthenticationMiddleware

from tokencomp.serving import metrics, spec
from tokencomp.serving.model_support import QWEN, image_tokens, resolve_request

logger = logging.getLogger("vllm.tokencomp")  # under vLLM's logger, so its handler prints it
_IMAGE_PARTS = {"image_url", "input_image", "image_pil", "image_embeds"}


def _error(message: str, param: str) -> JSONResponse:
    """vLLM's error body, so clients read `param` and `message` the same way as for its own 400s."""
    return JSONResponse({"error": {"message": message, "type": "BadRequestError", "param": param, "code": 400}},
                        status_code=400)


def _authorised(request: Request) -> bool:
    """The check vLLM's own authentication middleware makes (which runs after this one)."""
    keys = [k for k in (request.app.state.args.api_key or [envs.VLLM_API_KEY]) if k]
    return not keys or AuthenticationMiddleware(request.app, keys).verify_token(request.headers)


def count_images(messages: object) -> int:
    """Image parts in a chat request's messages (malformed messages count 0; vLLM refuses them itself)."""
    if not isinstance(messages, list):
        return 0
    return sum(1 for m in messages if isinstance(m, dict) and isinstance(m.get("content"), list)
               for part in m["content"] if isinstance(part, dict) and part.get("type") in _IMAGE_PARTS)


async def tokencomp_requests(request: Request, call_next) -> Response:
    if request.method != "POST" or not request.url.path.startswith("/v1/") or not _authorised(request):
        return await call_next(request)
    try:
        payload = json.loads(await request.body())
    except ValueError:
        return await call_next(request)  # vLLM answers malformed JSON itself
    if not isinstance(payload, dict):
        return await call_next(request)
    hf_config = request.app.state.vllm_config.model_config.hf_config
    kwargs = payload.get("mm_processor_kwargs") or {}
    if not isinstance(kwargs, dict):
        return await call_next(request)  # vLLM's own request schema refuses it
    try:
        resolved = resolve_request(kwargs, hf_config)
    except spec.SpecError as exc:
        return _error(str(exc), exc.field)
    response = await call_next(request)
    images = count_images(payload.get("messages")) if request.url.path == "/v1/chat/completions" else 0
    if images and 200 <= response.status_code < 300:
        if hf_config.model_type in QWEN:  # each image has its own N, known only once processed: images only
            metrics.record(resolved, images=images, n_in=0, n_out=0)
            logger.info("tokencomp: method=%s budget=%s images=%d", resolved.method, resolved.budget, images)
        else:
            n = image_tokens(hf_config)
            metrics.record(resolved, images=images, n_in=n * images, n_out=resolved.tokens_out(n) * images)
            logger.info("tokencomp: method=%s budget=%s images=%d visual tokens %d -> %d", resolved.method,
                        resolved.budget, images, n * images, resolved.tokens_out(n) * images)
    return response
