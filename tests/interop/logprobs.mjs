// Runs GGUF models in llama.cpp (through node-llama-cpp's prebuilt CPU binary) on byte windows
// and writes, per model, the log-probability of every next byte: the third-party side of
// q2n's export checks. Token ids are fed directly (token id = byte value).
//
//   node logprobs.mjs --tokens FILE --seqlen T --windows N --threads K --out OUT.json
//                     [--rows R] [--prompt TEXT] MODEL.gguf [MODEL.gguf ...]
//
// Window w has inputs bytes[wT, wT+T) and targets bytes[wT+1, wT+T+1) (the reference
// perplexity protocol). OUT.json: {"models": [{"path", "windows", "predictions", "nll",
// "ppl", "target_logp": [...], "argmax": [...], "rows": [[256 log p] x R]}]}, with
// target_logp/argmax for every prediction in window order and the full log-probability rows
// of the first R positions of window 0. With --prompt, each model also continues TEXT greedily
// for 160 bytes, printed on stderr.
import {getLlama, LlamaLogLevel} from "node-llama-cpp";
import {readFileSync, writeFileSync} from "node:fs";

function parseArgs(argv) {
  const o = {models: [], rows: 0};
  for (let i = 0; i < argv.length; ++i) {
    const a = argv[i];
    const next = () => {
      if (i + 1 >= argv.length) throw new Error(`${a} needs a value`);
      return argv[++i];
    };
    if (a === "--tokens") o.tokens = next();
    else if (a === "--seqlen") o.seqlen = Number(next());
    else if (a === "--windows") o.windows = Number(next());
    else if (a === "--threads") o.threads = Number(next());
    else if (a === "--rows") o.rows = Number(next());
    else if (a === "--out") o.out = next();
    else if (a === "--prompt") o.prompt = next();
    else if (a.startsWith("--")) throw new Error(`unknown option ${a}`);
    else o.models.push(a);
  }
  for (const k of ["tokens", "seqlen", "windows", "threads", "out"])
    if (o[k] === undefined || Number.isNaN(o[k])) throw new Error(`--${k} is required`);
  if (o.models.length === 0) throw new Error("no model given");
  return o;
}

async function evaluateModel(llama, path, bytes, o) {
  const model = await llama.loadModel({modelPath: path, gpuLayers: 0});
  const context = await model.createContext({
    // One slot more than a window: with exactly seqlen slots, node-llama-cpp shifts the context
    // (drops its first tokens) before evaluating the last position of a full window.
    contextSize: o.seqlen + 1,
    batchSize: o.seqlen,
    sequences: 1,
    threads: o.threads,
    flashAttention: false,
    // F32 KV cache: the default F16 cache alone moves log p by up to 5e-3.
    experimentalKvCacheKeyType: "F32",
    experimentalKvCacheValueType: "F32",
  });
  const sequence = context.getSequence();
  const vocab = model.tokens.vocab?.size ?? 256;
  const targetLogp = [];
  const argmax = [];
  const rows = [];
  let nll = 0;
  for (let w = 0; w < o.windows; ++w) {
    await sequence.clearHistory();
    const start = w * o.seqlen;
    const input = [];
    for (let t = 0; t < o.seqlen; ++t)
      input.push([bytes[start + t], {generateNext: {probabilities: true}}]);
    const out = await sequence.controlledEvaluate(input);
    for (let t = 0; t < o.seqlen; ++t) {
      const probs = out[t]?.next?.probabilities;
      if (!probs) throw new Error(`${path}: no probabilities at window ${w}, position ${t}`);
      const target = bytes[start + t + 1];
      const p = probs.get(target) ?? 0;
      const lp = Math.log(p);
      targetLogp.push(lp);
      nll -= lp;
      argmax.push(probs.keys().next().value);  // the map is sorted by probability
      if (w === 0 && t < o.rows) {
        const row = new Array(256).fill(-Infinity);
        for (const [tok, q] of probs) if (tok < 256) row[tok] = Math.log(q);
        rows.push(row);
      }
    }
  }
  let continuation;
  if (o.prompt !== undefined) {
    await sequence.clearHistory();
    const out = [];
    const prompt = [...Buffer.from(o.prompt, "latin1")];
    for await (const token of sequence.evaluate(prompt, {temperature: 0, yieldEogToken: true})) {
      out.push(token);
      if (out.length >= 160 || prompt.length + out.length >= o.seqlen) break;
    }
    continuation = Buffer.from(out).toString("latin1");
  }
  await context.dispose();
  await model.dispose();
  const predictions = o.windows * o.seqlen;
  return {path, windows: o.windows, predictions, nll, ppl: Math.exp(nll / predictions),
          vocab, target_logp: targetLogp, argmax, rows, continuation};
}

const o = parseArgs(process.argv.slice(2));
const bytes = readFileSync(o.tokens);
if (bytes.length < o.windows * o.seqlen + 1)
  throw new Error(`${o.tokens} has ${bytes.length} bytes, fewer than ${o.windows} windows need`);
// build: "never": a missing prebuilt binary is an error, never a source build or a download.
const llama = await getLlama({gpu: false, build: "never", logLevel: LlamaLogLevel.error});
const models = [];
for (const path of o.models) {
  const t0 = performance.now();
  models.push(await evaluateModel(llama, path, bytes, o));
  process.stderr.write(`logprobs: ${path}: ppl ${models.at(-1).ppl.toFixed(6)} over ` +
                       `${o.windows} windows (${((performance.now() - t0) / 1000).toFixed(1)} s)\n`);
  if (o.prompt !== undefined)
    process.stderr.write(`logprobs: ${path}: greedy continuation of ${JSON.stringify(o.prompt)}:\n` +
                         `${o.prompt}${models.at(-1).continuation}\n`);
}
// JSON has no -Infinity: a zero probability is written as null.
writeFileSync(o.out, JSON.stringify({models}, (k, v) => (v === -Infinity ? null : v)));
