"""A tiny deterministic server speaking the protocols of our RL clients (run as a separate process).

  POST /v1/chat/completions  CompassVerifier-style judge: "A" if the candidate ends with the standard answer,
                             "C" if the candidate is empty, else "B".
  POST /v1/reward            POLAR-style: {"items": [{prompt, reference, output}]} -> {"rewards": [difflib ratio]}
  POST /v1/completions       OpenAI completions over token ids (vLLM style: return_tokens_as_token_ids): the
                             response repeats the last prompt token + version, each with logprob -0.5; with
                             return_routed_experts, per-token expert ids [layers][top-2] (t % 4, (t+l+1) % 4).
  POST /update_weights       {"path": ...} -> bumps the weight version.

Usage: python tests/rl/fake_server.py PORT
"""
import difflib
import json
import re
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

STATE = {"version": 0, "paths": []}


def _judge(content: str) -> str:
    ref = re.search(r"<Standard Answer Begin>\n(.*?)\n<Standard Answer End>", content, re.S).group(1).strip()
    cand = re.search(r"<Candidate's Answer Begin>\n(.*?)\n<Candidate's Answer End>", content, re.S).group(1).strip()
    if not cand:
        return "C"
    return "A" if cand.endswith(ref) else "B"


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def _reply(self, obj):
        body = json.dumps(obj).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self._reply({"data": [{"id": "fake"}], "version": STATE["version"]})

    def do_POST(self):
        req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path == "/v1/chat/completions":
            letter = _judge(req["messages"][-1]["content"])
            return self._reply({"choices": [{"index": 0, "message": {"role": "assistant", "content": letter}}]})
        if self.path == "/v1/reward":
            return self._reply({"rewards": [difflib.SequenceMatcher(None, it["reference"] or "", it["output"]).ratio()
                                             for it in req["items"]]})
        if self.path == "/update_weights":
            STATE["version"] += 1
            STATE["paths"].append(req.get("path"))
            return self._reply({"ok": True, "version": STATE["version"]})
        if self.path == "/v1/completions":
            prompts = req["prompt"]
            if prompts and isinstance(prompts[0], int):
                prompts = [prompts]
            choices = []
            for p in prompts:
                for _ in range(req.get("n", 1)):
                    tok = (p[-1] + STATE["version"]) % 100
                    toks = [tok] * req.get("max_tokens", 4)
                    choice = {"index": len(choices), "text": "", "finish_reason": "length",
                              "logprobs": {"tokens": [f"token_id:{t}" for t in toks],
                                           "token_logprobs": [-0.5] * len(toks)}}
                    if req.get("return_routed_experts"):  # 2 layers, top-2 of 4 experts; last token not forwarded
                        seq = list(p) + toks[:-1]
                        choice["routed_experts"] = [[[t % 4, (t + layer + 1) % 4] for layer in range(2)] for t in seq]
                    choices.append(choice)
            return self._reply({"choices": choices})
        self.send_response(404)
        self.end_headers()


if __name__ == "__main__":
    server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
    print("ready", flush=True)
    server.serve_forever()
