#!/usr/bin/env node
// Speculative decoding from Node.js in one call: the verifier's Generate RPC runs the round loop
// itself (specdec/serving_generate.py) and streams the text, so this client holds no loop, no
// proposer connection and no tokenizer. (round_loop.mjs runs the loop here, over Sessions.)
//   node examples/node/generate.mjs --verifier HOST:PORT --prompt TEXT [--method draft|ngram|turbo|none] \
//     [--num-speculative-tokens K|auto] [--max-new-tokens N] [--stop TEXT ...] [--ignore-eos] [--json]
// Method draft drafts on the proposer service at the verifier's own --proposer.
import { parseArgs } from 'node:util';
import { SECURITY_OPTIONS, authMetadata, channelCredentials, exitWithError, info, loadApi } from './connect.mjs';

function options() {
  const { values } = parseArgs({ options: {
    verifier: { type: 'string' }, prompt: { type: 'string' }, method: { type: 'string', default: 'none' },
    'max-new-tokens': { type: 'string', default: '0' }, 'num-speculative-tokens': { type: 'string', default: '0' },
    stop: { type: 'string', multiple: true, default: [] },
    'ignore-eos': { type: 'boolean', default: false }, json: { type: 'boolean', default: false },
    ...SECURITY_OPTIONS,
  } });
  if (!values.verifier || values.prompt === undefined) throw new Error('--verifier and --prompt are required');
  return values;
}

// The GenerateRequest: k 0 = the largest the method accepts; "auto" = that, chosen per round.
function request(args) {
  const auto = args['num-speculative-tokens'] === 'auto';
  return { text: args.prompt, method: args.method, k: auto ? 0 : Number(args['num-speculative-tokens']),
    adaptive_k: auto, max_new_tokens: Number(args['max-new-tokens']), stop: args.stop,
    ignore_eos: args['ignore-eos'] };
}

async function main() {
  const args = options();
  const metadata = authMetadata(args);
  const verifier = new (loadApi().Verifier)(args.verifier, channelCredentials(args));
  await info(verifier, metadata); // waits for the service (and checks the token) before timing
  const t0 = performance.now();
  const call = verifier.Generate(request(args), metadata);
  // Ctrl-C cancels the call: the verifier frees the slot after the step in progress.
  process.once('SIGINT', () => call.cancel());
  if (!args.json) process.stdout.write(args.prompt);
  // Each reply adds text (never a piece of a stop string); the last has finish_reason and metrics.
  const ids = [];
  let text = '', last = null;
  for await (const reply of call) {
    ids.push(...reply.tokens);
    text += reply.text;
    if (!args.json) process.stdout.write(reply.text);
    last = reply;
  }
  const m = last.metrics;
  const out = { prompt: args.prompt, ids, text, finish_reason: last.finish_reason.replace('FINISH_REASON_', ''),
    client_e2e_time_s: (performance.now() - t0) / 1000, metrics: m };
  if (args.json) {
    console.log(JSON.stringify(out));
  } else {
    console.error(`\n--- ${m.generated_tokens} tokens, finish: ${out.finish_reason}, mean accepted tokens ` +
      `${m.mean_accepted_tokens.toFixed(2)}, TTFT ${(1000 * m.ttft_s).toFixed(0)} ms, ` +
      `${m.e2e_throughput.toFixed(1)} tokens/s`);
  }
  verifier.close();
}

main().catch(exitWithError);
