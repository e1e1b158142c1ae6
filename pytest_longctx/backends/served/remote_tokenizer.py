"""An engine's own tokenizer over HTTP, and chat messages rebuilt from token ids, for token-exact served prompts."""

from __future__ import annotations

import http.client
import json
import urllib.parse
from collections.abc import Sequence
from typing import Any

from .transport import ServedBackendError, connection


def chat_content(tokenizer: Any, ids: Sequence[int]) -> str:
    """The user message that the tokenizer's chat template turned into `ids` (one user turn, generation prompt added).

    Raises ServedBackendError if the ids were not made that way, or the tokenizer has no chat template.
    """
    if getattr(tokenizer, "chat_template", None) is None or not hasattr(tokenizer, "apply_chat_template"):
        raise ServedBackendError("api: chat needs a local tokenizer with a chat template; use api: completions")
    marker = "\x00longctx-content\x00"
    wrapped = str(tokenizer.apply_chat_template([{"role": "user", "content": marker}], add_generation_prompt=True, tokenize=False))
    head, _, tail = wrapped.partition(marker)
    text = tokenizer.decode(list(ids), skip_special_tokens=False)
    if not text.startswith(head) or not text.endswith(tail) or len(text) < len(head) + len(tail):
        raise ServedBackendError(
            "api: chat got a prompt that is not one user message in the tokenizer's chat template; use api: completions")
    return text[len(head) : len(text) - len(tail)]


class RemoteTokenizer:
    """Token ids from the served engine's own tokenizer, for prompts that are token-exact on that engine.

    One request suits both llama.cpp (POST /tokenize {content, add_special} -> {tokens}) and vLLM
    (POST /tokenize {prompt, add_special_tokens} -> {tokens}); llama-cpp-python's server is asked at
    POST /extras/tokenize {input} instead (it adds the model's own special tokens, none for most chat models).

    `local`, a tokenizer of the same vocabulary, lends its chat template and decodes; decoding a byte-level
    vocabulary is a lookup that any copy gets right, where encoding can differ (llama.cpp's pre-tokenizer
    keeps "\n\n" as one token where SmolLM2's Hugging Face tokenizer splits it before a digit). Without it,
    decoding asks the server's /detokenize, and there is no chat template, so haystacks end in "\nAnswer:".
    """

    def __init__(self, base_url: str, *, model: str | None = None, timeout_s: float = 30.0, local: Any = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.timeout_s = timeout_s
        self.local = local
        self._extras = False  # llama-cpp-python's paths, once /tokenize answered 404

    @property
    def chat_template(self) -> Any:
        return getattr(self.local, "chat_template", None)

    def apply_chat_template(self, messages: Any, **kwargs: Any) -> Any:
        if self.chat_template is None:
            raise ServedBackendError("this RemoteTokenizer has no chat template: pass local= a tokenizer that has one")
        return self.local.apply_chat_template(messages, **kwargs)

    @property
    def backend_tokenizer(self) -> Any:
        """The local copy's vocabulary, for fingerprints: the engine's is the same one or `local` is wrong."""
        return getattr(self.local, "backend_tokenizer", None)

    def get_vocab(self) -> dict[str, int]:
        if self.local is None:
            raise ServedBackendError("this RemoteTokenizer has no local vocabulary: pass local= the model's tokenizer")
        return dict(self.local.get_vocab())

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        if not self._extras:
            body: dict[str, Any] = {"content": text, "prompt": text, "add_special": add_special_tokens,
                                    "add_special_tokens": add_special_tokens}
            if self.model is not None:
                body["model"] = self.model
            status, answer = self.post("/tokenize", body)
            if status != 404:
                return self._tokens(status, answer, "/tokenize")
            self._extras = True
        status, answer = self.post("/extras/tokenize", {"input": text})
        return self._tokens(status, answer, "/extras/tokenize")

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        if self.local is not None:
            return str(self.local.decode(list(ids), skip_special_tokens=skip_special_tokens))
        # The servers' detokenizers decide for themselves whether special tokens show (llama-cpp-python's
        # drop them); `skip_special_tokens` is accepted for the transformers call shape only.
        path, key = ("/extras/detokenize", "text") if self._extras else ("/detokenize", None)
        status, answer = self.post(path, {"tokens": list(ids)})
        if status != 200:
            raise ServedBackendError(f"{self.base_url}{path} answered HTTP {status}: {answer!r:.300}")
        for name in (key,) if key else ("content", "prompt", "text"):  # llama.cpp, vLLM, llama-cpp-python
            if isinstance(answer.get(name), str):
                return str(answer[name])
        raise ServedBackendError(f"{self.base_url}{path} answered without the text: {answer!r:.300}")

    def __call__(self, text: str | Sequence[str], add_special_tokens: bool = False) -> dict[str, Any]:
        """The transformers call shape that haystack building uses: {"input_ids": ids or a list of them}."""
        if isinstance(text, str):
            return {"input_ids": self.encode(text, add_special_tokens)}
        return {"input_ids": [self.encode(t, add_special_tokens) for t in text]}

    def _tokens(self, status: int, answer: dict[str, Any], path: str) -> list[int]:
        tokens = answer.get("tokens")
        if status != 200 or not isinstance(tokens, list):
            raise ServedBackendError(f"{self.base_url}{path} answered HTTP {status}: {answer!r:.300}")
        # llama.cpp can answer [{id, piece}] when asked for pieces; plain ids otherwise.
        return [int(t["id"]) if isinstance(t, dict) else int(t) for t in tokens]

    def post(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        parts = urllib.parse.urlsplit(self.base_url)
        conn = connection(parts, self.timeout_s)
        try:
            conn.request("POST", parts.path.rstrip("/") + path, body=json.dumps(body).encode(),
                         headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            raw = response.read()
        except (OSError, http.client.HTTPException) as exc:
            raise ServedBackendError(f"{self.base_url}{path} failed: {exc}") from exc
        finally:
            conn.close()
        try:
            answer = json.loads(raw) if raw else {}
        except json.JSONDecodeError:
            answer = {"body": raw.decode("utf-8", errors="replace")[:300]}
        return response.status, answer if isinstance(answer, dict) else {"body": answer}
