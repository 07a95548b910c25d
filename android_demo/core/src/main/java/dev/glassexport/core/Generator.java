package dev.glassexport.core;

import java.util.ArrayList;
import java.util.List;
import java.util.function.BooleanSupplier;

/** The generation loop: prefill, take the kept indices, decode until EOS, the limit or a stop request. */
public final class Generator {
  /** Called with every new token and the text so far. */
  public interface Listener {
    void onToken(long token, String textSoFar);
  }

  public static final class Result {
    public final List<Long> tokens = new ArrayList<>();
    public long[][] indices;
    public float[] firstLogits;
    public double prefillMs;
    public double decodeSeconds;
    public String text = "";
    /** True when the stop request ended the loop before EOS or the limit. */
    public boolean stopped;

    /** Decoded tokens per second (the first token comes from prefill). */
    public double decodeTokensPerSecond() {
      int steps = tokens.size() - 1;
      return steps > 0 && decodeSeconds > 0 ? steps / decodeSeconds : 0.0;
    }
  }

  private final Backend backend;
  private final Manifest manifest;
  private final BpeTokenizer tokenizer;

  public Generator(Backend backend, Manifest manifest, BpeTokenizer tokenizer) {
    this.backend = backend;
    this.manifest = manifest;
    this.tokenizer = tokenizer;
  }

  public long[] encode(String prompt) {
    return tokenizer.encode(prompt, manifest.addBos ? manifest.bosTokenId : null);
  }

  public Result generate(String prompt, int maxNewTokens, Sampler sampler, Listener listener) {
    return generate(prompt, maxNewTokens, sampler, listener, () -> false);
  }

  /** As above; `stopRequested` is polled before every decode step (the app's Stop button, leaving the screen). */
  public Result generate(String prompt, int maxNewTokens, Sampler sampler, Listener listener, BooleanSupplier stopRequested) {
    if (prompt == null || prompt.isBlank()) throw new GlassException("the prompt is empty", "type a prompt");
    long[] ids = encode(prompt);
    if (ids.length > manifest.maxSeqLen) {
      throw new GlassException(
          "the prompt has " + ids.length + " tokens, more than the exported maximum of " + manifest.maxSeqLen,
          "shorten it or re-export with a larger --max-seq-len");
    }
    Result result = new Result();
    long start = System.nanoTime();
    Backend.Prefill prefill = backend.prefill(ids);
    result.prefillMs = (System.nanoTime() - start) / 1e6;
    result.indices = prefill.indices;
    result.firstLogits = prefill.lastLogits;
    float[] logits = prefill.lastLogits;
    long position = ids.length;
    start = System.nanoTime();
    for (int step = 0; step < maxNewTokens; step++) {
      long token = sampler.next(logits);
      result.tokens.add(token);
      result.text = tokenizer.decode(result.tokens.stream().mapToLong(Long::longValue).toArray());
      if (listener != null) listener.onToken(token, result.text);
      if (manifest.eosTokenIds.contains(token) || step == maxNewTokens - 1 || position >= manifest.maxSeqLen) break;
      if (stopRequested.getAsBoolean()) {
        result.stopped = true;
        break;
      }
      logits = backend.decode(token, position, prefill.indices);
      position++;
    }
    result.decodeSeconds = (System.nanoTime() - start) / 1e9;
    return result;
  }
}
