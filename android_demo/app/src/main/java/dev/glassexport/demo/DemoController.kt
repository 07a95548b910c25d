package dev.glassexport.demo

import dev.glassexport.core.Backend
import dev.glassexport.core.BpeTokenizer
import dev.glassexport.core.ExecuTorchBackend
import dev.glassexport.core.GlassException
import dev.glassexport.core.Generator
import dev.glassexport.core.Manifest
import dev.glassexport.core.OrtBackend
import dev.glassexport.core.QnnBackend
import dev.glassexport.core.Sampler
import java.nio.file.Path
import java.util.concurrent.ExecutorService
import java.util.concurrent.Executors
import java.util.concurrent.Future
import java.util.concurrent.atomic.AtomicInteger

/**
 * What the screen does, without the screen: opens an artifact with the backend its manifest names,
 * generates on one worker thread, streams to [Screen] through [post] (the UI thread), can be stopped,
 * and closes its session when the screen goes away. No android.* here, so it is plain to test.
 */
class DemoController(
    private val nativeLibraryDir: Path?,
    private val post: (() -> Unit) -> Unit,
    private val screen: Screen,
    private val threads: Int = 0,
) : AutoCloseable {
    interface Screen {
        fun showInfo(text: String)
        fun showOutput(text: String)
        fun showStats(text: String)
        fun showMessage(text: String)
        fun setRunning(running: Boolean)
    }

    /** An open artifact; only the worker thread touches it. */
    private class Session(val directory: Path, val manifest: Manifest, val backend: Backend) {
        val generator = Generator(backend, manifest, BpeTokenizer(directory.resolve("tokenizer.json")))
    }

    private val worker: ExecutorService = Executors.newSingleThreadExecutor { Thread(it, "glass-generate").apply { isDaemon = true } }
    @Volatile private var stopRequested = false
    @Volatile private var closed = false
    private var session: Session? = null
    /** Decode tokens/s last measured per artifact directory: the speed-up once both twins ran. */
    private val speeds = HashMap<Path, Double>()

    /** Starts a generation; input problems are shown at once, load and run problems when they happen. */
    fun generate(directory: String, prompt: String, dense: Boolean, maxNewTokens: Int): Future<*>? {
        if (closed) return null
        if (directory.isBlank()) return message("the artifact directory is empty (fix: type the directory you pushed with adb)")
        if (prompt.isBlank()) return message("the prompt is empty (fix: type a prompt)")
        val dir = Path.of(directory.trim() + if (dense) DENSE_SUFFIX else "")
        stopRequested = false
        screen.setRunning(true)
        screen.showOutput("")
        return worker.submit {
            try {
                run(dir, prompt, maxNewTokens)
            } catch (e: GlassException) {
                post { screen.showMessage(e.message ?: e.toString()) }
            } catch (e: RuntimeException) {
                post { screen.showMessage("error: $e") }
            } finally {
                post { screen.setRunning(false) }
            }
        }
    }

    private fun run(dir: Path, prompt: String, maxNewTokens: Int) {
        val current = open(dir)
        val manifest = current.manifest
        post {
            screen.showMessage("")
            screen.showInfo(describe(manifest) + "\n" + current.backend.runtime() + " · op: " + current.backend.opImplementation())
        }
        val started = System.nanoTime()
        var count = 0
        val result = current.generator.generate(prompt, maxNewTokens, Sampler.greedy(), { _, soFar ->
            count++
            val rate = count / ((System.nanoTime() - started) / 1e9)
            post {
                screen.showOutput(soFar)
                screen.showStats("%.1f tokens/s".format(rate))
            }
        }, { stopRequested || closed })
        val rate = result.decodeTokensPerSecond()
        speeds[dir] = rate
        val stats = StringBuilder("prefill %.1f ms · decode %.1f tokens/s · kept %.0f%% (%d/%d)".format(
            result.prefillMs, rate, 100.0 * manifest.k / manifest.m, manifest.k, manifest.m))
        val sparse = if (manifest.sparseDecode) dir else Path.of(dir.toString().removeSuffix(DENSE_SUFFIX))
        val sparseRate = speeds[sparse]
        val denseRate = speeds[Path.of(sparse.toString() + DENSE_SUFFIX)]
        if (sparseRate != null && denseRate != null && sparseRate > 0 && denseRate > 0) {
            stats.append(" · speed-up vs dense twin %.2fx".format(sparseRate / denseRate))
        }
        if (result.stopped) stats.append(" · stopped")
        post {
            screen.showOutput(result.text)
            screen.showStats(stats.toString())
        }
    }

    /** The open session for dir, or a new one (the old one closed first: one model in memory at a time). */
    private fun open(dir: Path): Session {
        session?.let { if (it.directory == dir) return it }
        closeSession()
        val manifest = Manifest.load(dir)
        val backend = backendFactory(manifest, nativeLibraryDir, threads)
        openSessions.incrementAndGet()
        return Session(dir, manifest, backend).also { session = it }
    }

    private fun closeSession() {
        session?.let {
            session = null
            it.backend.close()
            openSessions.decrementAndGet()
        }
    }

    private fun message(text: String): Future<*>? {
        screen.showMessage(text)
        return null
    }

    fun stop() {
        stopRequested = true
    }

    /** Stops the generation and closes the session on the worker, after the step in flight; does not wait. */
    override fun close() {
        if (closed) return
        closed = true
        worker.submit { closeSession() }
        worker.shutdown()
    }

    companion object {
        const val DENSE_SUFFIX = "-dense"
        /** Sessions open in this process (tests check that leaving the screen closes them). */
        val openSessions = AtomicInteger()

        /** The runtime the manifest names (tests wrap it to slow it down or watch its thread). */
        @Volatile var backendFactory: (Manifest, Path?, Int) -> Backend = ::openBackend

        fun openBackend(manifest: Manifest, nativeLibraryDir: Path?, threads: Int): Backend = when (manifest.target) {
            "onnx" -> OrtBackend(manifest, nativeLibraryDir, threads)
            "executorch" -> ExecuTorchBackend(manifest, nativeLibraryDir, threads)
            "qnn" -> QnnBackend(manifest, QnnBackend.Accelerator.HTP, threads)
            else -> throw GlassException("artifact target ${manifest.target} is not one this app runs", "export --target onnx, executorch or qnn")
        }

        fun describe(m: Manifest): String =
            if (m.sparseDecode) "${m.target}: ${m.method} density=${m.density} lambda=${m.lambda ?: "-"} k=${m.k}/${m.m} ${m.weights}"
            else "${m.target}: dense twin k=${m.k}/${m.m} ${m.weights}"
    }
}
