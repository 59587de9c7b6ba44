// Greedy generation with transformers.js (Node, onnxruntime-node) on a model folder, for the interop tests.
//
//   node transformers_js_generate.mjs <node_modules dir> <model dir> <request.json> <out.json>
//
// request: {"prompt": "...", "image": "path.png" | null, "dtype": "fp32", "max_new_tokens": 16,
//           "pixels_out": "path.bin" | null}
// out: {"prompt_ids": [...], "token_ids": [...], "native_prompt_tokens": n | null}
//
// The image placeholder is expanded the way Python transformers' Gemma4Processor does it
// (<boi> + <image> x n + <eoi>, no "\n\n" around it); transformers.js's own processor adds "\n\n" on both
// sides, whose prompt length is reported as native_prompt_tokens. Pixels come from transformers.js's own
// image processor.
import { readFileSync, writeFileSync } from 'node:fs';
import { basename, dirname, join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';

const [modulesDir, modelDir, requestPath, outPath] = process.argv.slice(2);
const entry = join(modulesDir, '@huggingface', 'transformers', 'dist', 'transformers.node.mjs');
const tjs = await import(pathToFileURL(entry).href);
const { AutoProcessor, Gemma4ForConditionalGeneration, RawImage, Tensor, env } = tjs;

const request = JSON.parse(readFileSync(requestPath, 'utf8'));
const model_dir = resolve(modelDir);
env.allowRemoteModels = false;
env.allowLocalModels = true;
env.localModelPath = dirname(model_dir);
const name = basename(model_dir);

const processor = await AutoProcessor.from_pretrained(name, { local_files_only: true });
const model = await Gemma4ForConditionalGeneration.from_pretrained(name, {
    dtype: request.dtype ?? 'fp32', device: 'cpu', local_files_only: true,
});

const content = [];
if (request.image) content.push({ type: 'image' });
content.push({ type: 'text', text: request.prompt });
let text = processor.apply_chat_template([{ role: 'user', content }], { add_generation_prompt: true, tokenize: false });

const inputs = {};
let native_prompt_tokens = null;
if (request.image) {
    const image = await RawImage.read(request.image);
    const vision = await processor.image_processor([image]);
    const n = vision.num_soft_tokens_per_image[0];
    const { boi_token, image_token, eoi_token } = processor;
    native_prompt_tokens = (await processor(text, [image])).input_ids.dims[1];
    text = text.replaceAll(image_token, () => `${boi_token}${image_token.repeat(n)}${eoi_token}`);
    inputs.pixel_values = vision.pixel_values;
    inputs.image_position_ids = vision.image_position_ids;
    if (request.pixels_out) {
        writeFileSync(request.pixels_out, Buffer.from(vision.pixel_values.data.buffer));
    }
}
const encoded = processor.tokenizer(text, { add_special_tokens: false });
inputs.input_ids = encoded.input_ids;
inputs.attention_mask = encoded.attention_mask;

const sequences = await model.generate({ ...inputs, max_new_tokens: request.max_new_tokens ?? 16, do_sample: false });
const all = Array.from(sequences.data, (v) => Number(v));
const prompt_ids = Array.from(inputs.input_ids.data, (v) => Number(v));
writeFileSync(outPath, JSON.stringify({
    prompt_ids, token_ids: all.slice(prompt_ids.length), native_prompt_tokens,
}));
await model.dispose();
