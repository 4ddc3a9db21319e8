#!/usr/bin/env node
// Speculative decoding from Node.js against the specdec.v1 services, on protos/ as they are (no
// generated code), over the low-level protocol: this client runs the round loop itself, over
// one Session stream per service. The loop is specdec/generation.py's, written to be read
// beside it. (generate.mjs does the same in one Generate call: the verifier runs this loop.)
//   node examples/node/round_loop.mjs --verifier HOST:PORT [--proposer HOST:PORT] --prompt TEXT \
//     --max-new-tokens N --num-speculative-tokens K [--ignore-eos] [--json]
// The verifier tokenizes and detokenizes (Tokenize/Detokenize), so no tokenizer is needed here.
import { parseArgs } from 'node:util';
import grpc from '@grpc/grpc-js';
import { SECURITY_OPTIONS, authMetadata, channelCredentials, exitWithError, info, loadApi, unary } from './connect.mjs';

const UNFINISHED = 'FINISH_REASON_UNSPECIFIED';
// The service went away or did not answer in time: a new session may work (specdec/recovery.py).
const LOST = new Set([grpc.status.UNAVAILABLE, grpc.status.DEADLINE_EXCEEDED, grpc.status.CANCELLED]);
const RECOVERY = { backoffS: 0.2, backoffMaxS: 3, proposerRetryMs: 2000 }; // RecoveryPolicy's

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const lost = (message) => Object.assign(new Error(message), { code: grpc.status.UNAVAILABLE, details: message });

function withTimeout(promise, seconds, onTimeout) {
  let timer;
  const expired = new Promise((_, reject) => {
    timer = setTimeout(() => { onTimeout(); reject(lost(`no reply within ${seconds}s`)); }, seconds * 1000);
  });
  return Promise.race([promise, expired]).finally(() => clearTimeout(timer));
}

// One bidirectional stream = one session on the service (one KV slot or n-gram history).
class Session {
  constructor(client, metadata, stepTimeoutS) {
    this.call = client.Session(metadata);
    this.call.on('error', () => {}); // the status reaches step() through the iterator
    this.replies = this.call[Symbol.asyncIterator]();
    this.stepTimeoutS = stepTimeoutS;
  }

  async step(request) {
    this.call.write(request);
    const next = withTimeout(this.replies.next(), this.stepTimeoutS, () => this.call.cancel());
    const { value, done } = await next; // rejects with the service's status on an error
    if (done) throw lost('the service ended the session');
    return value;
  }

  close() {
    this.call.end(); // half-close, then cancel, so the service frees the slot at once
    this.call.cancel();
  }
}

function commonPrefixLen(a, b, known = 0) {
  const n = Math.min(a.length, b.length);
  let i = Math.min(known, n);
  while (i < n && a[i] === b[i]) i += 1;
  return i;
}

// The round loop. prompt: token ids; links: { openVerifier, openProposer (or null) }.
async function generate(prompt, links, cfg, ctxLen, fingerprint, onTokens) {
  const rec = { tokens: [], finish: UNFINISHED, verifySteps: 0, stepTokens: 0, drafted: 0, accepted: 0 };
  const [t0, cpu0] = [performance.now(), process.cpuUsage()];
  const seq = [...prompt]; // prompt + everything emitted: the source of truth
  let held = []; // what the proposer session holds
  let heldAgrees = 0; // held[:heldAgrees] equals seq[:heldAgrees], known
  let guesses = []; // Turbo: the verifier's own heads' next draft
  let verifier = null;
  let proposer = cfg.k > 0 && links.openProposer ? links.openProposer() : null;
  let proposerDownAt = null;
  const remaining = () => (cfg.maxNewTokens ? cfg.maxNewTokens - rec.tokens.length : 0);

  // Prefill the verifier with the whole sequence (start = 0), retrying a lost verifier with
  // backoff until the deadline: a new session emits the token the lost step would have.
  async function prefill() {
    const deadline = Date.now() + cfg.recoveryDeadlineS * 1000;
    for (let delay = 0; ; delay = Math.min(delay ? 2 * delay : RECOVERY.backoffS, RECOVERY.backoffMaxS)) {
      await sleep(delay * 1000);
      try {
        verifier ??= links.openVerifier();
        return await verifier.step({ prefill: {
          start: 0, tokens: seq, max_new_tokens: remaining(), ignore_eos: cfg.ignoreEos,
          draft_tokenizer_fingerprint: fingerprint } });
      } catch (err) {
        if (!LOST.has(err.code) || Date.now() + delay * 1000 > deadline) throw err;
        verifier.close();
        verifier = null;
      }
    }
  }

  async function propose(k) {
    if (proposerDownAt && Date.now() - proposerDownAt >= RECOVERY.proposerRetryMs) {
      [proposer, held, heldAgrees, proposerDownAt] = [links.openProposer(), [], 0, null];
    }
    if (!proposer) return guesses.slice(0, k); // Turbo guesses; empty = a target-only step
    const start = commonPrefixLen(held, seq, heldAgrees); // the sync rule
    try {
      const reply = await proposer.step({ start, tokens: seq.slice(start), k });
      held = [...seq, ...reply.draft_tokens].slice(0, reply.held_len);
      heldAgrees = Math.min(seq.length, reply.held_len);
      return reply.draft_tokens;
    } catch (err) {
      if (!LOST.has(err.code)) throw err;
      proposer.close(); // lossless either way: go on target-only, try a new session later
      [proposer, proposerDownAt] = [null, Date.now()];
      return [];
    }
  }

  async function verify(draft) {
    try {
      return await verifier.step({ verify: { draft_tokens: draft } });
    } catch (err) {
      if (!LOST.has(err.code)) throw err;
      verifier.close();
      verifier = null;
      return prefill();
    }
  }

  function commit(step) {
    seq.push(...step.tokens);
    rec.tokens.push(...step.tokens);
    rec.finish = step.finish_reason;
    guesses = step.next_draft;
    onTokens(step.tokens);
  }

  try {
    // Prefill the target and the draft concurrently: each owns its own device.
    const [first] = await Promise.all([prefill(), proposer && propose(0)]);
    commit(first);
    while (rec.finish === UNFINISHED) {
      let k = Math.min(cfg.k, ctxLen - seq.length);
      if (cfg.maxNewTokens) k = Math.min(k, cfg.maxNewTokens - rec.tokens.length - 1);
      const draft = k > 0 ? await propose(k) : [];
      const step = await verify(draft);
      rec.verifySteps += 1;
      rec.stepTokens += step.tokens.length;
      rec.drafted += step.num_drafted;
      rec.accepted += step.num_accepted_drafts;
      commit(step);
    }
  } finally {
    verifier?.close();
    proposer?.close();
  }
  rec.seconds = (performance.now() - t0) / 1000;
  const cpu = process.cpuUsage(cpu0);
  rec.cpuSeconds = (cpu.user + cpu.system) / 1e6; // this client's own cost, whatever the load
  return rec;
}

// Prints text as it is accepted: Detokenize with the ids already printed as the prefix.
function streamPrinter(detokenize, prompt) {
  const printed = [...prompt], pending = [];
  let done = Promise.resolve(), text = '';
  const write = (s) => { text += s; process.stdout.write(s); };
  return {
    push(ids) {
      pending.push(...ids);
      done = done.then(async () => {
        if (!pending.length) return;
        const reply = await detokenize({ ids: pending, prefix_ids: printed.slice(-8), skip_special_tokens: true });
        write(reply.text);
        printed.push(...pending.splice(0, reply.num_ids));
      });
    },
    async finish(full) { await done; write(full.startsWith(text) ? full.slice(text.length) : ''); },
  };
}

function options() {
  const { values } = parseArgs({ options: {
    verifier: { type: 'string' }, proposer: { type: 'string' }, prompt: { type: 'string' },
    'max-new-tokens': { type: 'string', default: '0' }, 'num-speculative-tokens': { type: 'string', default: '0' },
    'ignore-eos': { type: 'boolean', default: false }, json: { type: 'boolean', default: false },
    'step-timeout': { type: 'string', default: '60' }, 'recovery-deadline': { type: 'string', default: '60' },
    ...SECURITY_OPTIONS,
  } });
  if (!values.verifier || values.prompt === undefined) throw new Error('--verifier and --prompt are required');
  return values;
}

async function main() {
  const args = options();
  const cfg = { k: Number(args['num-speculative-tokens']), maxNewTokens: Number(args['max-new-tokens']),
    ignoreEos: args['ignore-eos'], stepTimeoutS: Number(args['step-timeout']),
    recoveryDeadlineS: Number(args['recovery-deadline']) };
  const creds = channelCredentials(args);
  const metadata = authMetadata(args);
  const api = loadApi();
  const verifier = new api.Verifier(args.verifier, creds);
  const vinfo = await info(verifier, metadata);
  // A Turbo verifier drafts with its own heads (next_draft): no proposer call.
  const proposer = args.proposer && vinfo.method !== 'turbo' ? new api.Proposer(args.proposer, creds) : null;
  const pinfo = proposer && await info(proposer, metadata);
  // An empty fingerprint (n-gram) means the proposer works with any tokenizer.
  if (pinfo?.tokenizer_fingerprint && pinfo.tokenizer_fingerprint !== vinfo.tokenizer_fingerprint) {
    throw new Error(`proposer ${pinfo.model_id} and verifier ${vinfo.model_id} use different tokenizers`);
  }
  const maxK = vinfo.method === 'turbo' ? vinfo.max_k : pinfo ? Math.min(vinfo.max_k, pinfo.max_k) : 0;
  if (cfg.k > maxK) throw new Error(`--num-speculative-tokens ${cfg.k} exceeds what the services accept (${maxK})`);
  const detokenize = (request) => unary(verifier, 'Detokenize', request, metadata);
  const { ids: prompt } = await unary(verifier, 'Tokenize', { text: args.prompt }, metadata);
  const links = {
    openVerifier: () => new Session(verifier, metadata, cfg.stepTimeoutS),
    openProposer: proposer && (() => new Session(proposer, metadata, cfg.stepTimeoutS)),
  };
  const printer = args.json ? null : streamPrinter(detokenize, prompt);
  if (printer) process.stdout.write(args.prompt);
  const rec = await generate(prompt, links, cfg, vinfo.ctx_len, pinfo?.tokenizer_fingerprint ?? '',
    (ids) => printer?.push(ids));
  const { text } = await detokenize({ ids: rec.tokens, skip_special_tokens: true });
  const out = { prompt: args.prompt, prompt_ids: prompt, ids: rec.tokens, text,
    finish_reason: rec.finish.replace('FINISH_REASON_', ''), generated_tokens: rec.tokens.length,
    mean_accepted_tokens: rec.verifySteps ? rec.stepTokens / rec.verifySteps : 0,
    drafted: rec.drafted, accepted: rec.accepted, e2e_time_s: rec.seconds,
    e2e_throughput: rec.tokens.length / rec.seconds, client_cpu_s: rec.cpuSeconds };
  if (printer) {
    await printer.finish(text);
    console.error(`\n--- ${out.generated_tokens} tokens, finish: ${out.finish_reason}, ` +
      `mean accepted tokens ${out.mean_accepted_tokens.toFixed(2)}, ${out.e2e_throughput.toFixed(1)} tokens/s`);
  } else {
    console.log(JSON.stringify(out));
  }
  verifier.close();
  proposer?.close();
}

main().catch(exitWithError);
