package dev.glassexport.core;

import java.nio.file.Path;

/** Run in a child JVM by ExecuTorchGoldenTest: opens a .pte with the bridge but without the LLM kernels preloaded. */
public final class MissingKernelsMain {
  public static void main(String[] args) {
    try (ExecuTorchBackend backend = new ExecuTorchBackend(Manifest.load(Path.of(args[0])), null, 1)) {
      System.out.println("LOADED " + backend.opImplementation());
    } catch (GlassException e) {
      System.out.println("GLASS " + e.getMessage());
    }
  }
}
