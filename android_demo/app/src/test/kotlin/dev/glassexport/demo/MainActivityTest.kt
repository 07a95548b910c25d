package dev.glassexport.demo

import android.content.Intent
import android.os.Looper
import android.text.Editable
import android.text.TextWatcher
import android.view.View
import com.google.gson.JsonObject
import com.google.gson.JsonParser
import dev.glassexport.core.Backend
import java.nio.file.Files
import java.nio.file.Path
import org.junit.After
import org.junit.Assert.assertEquals
import org.junit.Assert.assertFalse
import org.junit.Assert.assertNotEquals
import org.junit.Assert.assertTrue
import org.junit.Before
import org.junit.Test
import org.junit.runner.RunWith
import org.robolectric.Robolectric
import org.robolectric.RobolectricTestRunner
import org.robolectric.RuntimeEnvironment
import org.robolectric.Shadows.shadowOf
import org.robolectric.android.controller.ActivityController
import org.robolectric.annotation.Config
import org.robolectric.annotation.LooperMode

/**
 * The screen on the host (Robolectric, Android 14 framework classes) against the golden ONNX artifacts
 * tests/test_android_golden.py wrote: what `glass-export run` printed for the same prompt must appear.
 */
@RunWith(RobolectricTestRunner::class)
@Config(sdk = [34], manifest = Config.NONE)
@LooperMode(LooperMode.Mode.PAUSED)
class MainActivityTest {
    private val golden: Path = Path.of(System.getProperty("glass.golden", "../build/golden"))
    private lateinit var app: JsonObject
    private val artifact get() = golden.resolve("artifact").toString()

    @Before
    fun load() {
        val file = golden.resolve("golden.json")
        assertTrue("$file missing: run the Python tests first (bash scripts/test.sh)", Files.isRegularFile(file))
        app = JsonParser.parseString(Files.readString(file)).asJsonObject.getAsJsonObject("app")
        DemoController.backendFactory = DemoController::openBackend
        assertEquals("no session left open by an earlier test", 0, DemoController.openSessions.get())
    }

    @After
    fun reset() {
        DemoController.backendFactory = DemoController::openBackend
    }

    private fun launch(dir: String = artifact, maxNewTokens: Int = app.get("max_new_tokens").asInt): ActivityController<MainActivity> {
        val intent = Intent(RuntimeEnvironment.getApplication(), MainActivity::class.java)
            .putExtra(MainActivity.EXTRA_DIR, dir)
            .putExtra(MainActivity.EXTRA_MAX_NEW_TOKENS, maxNewTokens)
        return Robolectric.buildActivity(MainActivity::class.java, intent).setup()
    }

    /** Runs the UI thread's queue until `done`, while the worker thread generates (60 s at most). */
    private fun idleUntil(what: String, done: () -> Boolean) {
        val deadline = System.nanoTime() + 60_000_000_000L
        while (!done()) {
            shadowOf(Looper.getMainLooper()).idle()
            assertTrue("timed out waiting for $what", System.nanoTime() < deadline)
            Thread.sleep(5)
        }
        shadowOf(Looper.getMainLooper()).idle()
    }

    private fun MainActivity.press() {
        assertTrue(generate.isEnabled)
        generate.performClick()
        idleUntil("the generation to end") { generate.isEnabled && !stop.isEnabled }
    }

    private fun streamed(activity: MainActivity): MutableList<String> {
        val texts = mutableListOf<String>()
        activity.output.addTextChangedListener(object : TextWatcher {
            override fun beforeTextChanged(s: CharSequence?, start: Int, count: Int, after: Int) {}
            override fun onTextChanged(s: CharSequence?, start: Int, before: Int, count: Int) {}
            override fun afterTextChanged(s: Editable?) { if (!s.isNullOrEmpty()) texts.add(s.toString()) }
        })
        return texts
    }

    @Test
    fun generateStreamsWhatGlassExportRunPrinted() {
        val threads = mutableSetOf<Thread>()
        DemoController.backendFactory = { m, dir, n -> Watched(DemoController.openBackend(m, dir, n)) { threads.add(Thread.currentThread()) } }
        val controller = launch()
        val activity = controller.get()
        val texts = streamed(activity)
        activity.press()
        val expected = app.getAsJsonObject("sparse").get("text").asString
        assertEquals(expected, activity.output.text.toString())
        // streamed: one update per token (the decoded text so far), the last one the whole text
        assertTrue("streamed ${texts.size} updates", texts.size >= app.getAsJsonObject("sparse").getAsJsonArray("tokens").size())
        assertEquals(expected, texts.last())
        assertTrue(activity.stats.text.toString(), Regex("""prefill [0-9.]+ ms · decode [0-9.]+ tokens/s · kept 50% \(128/256\)""")
            .containsMatchIn(activity.stats.text))
        assertTrue(activity.info.text.toString(), activity.info.text.contains("onnx: griffin density=0.5"))
        assertTrue(activity.info.text.toString(), activity.info.text.contains("onnxruntime 1.29.0 · op: ONNX function fallback"))
        assertEquals(View.GONE, activity.message.visibility)
        // off the UI thread: every backend call ran on the worker
        assertEquals(1, threads.size)
        assertNotEquals(Looper.getMainLooper().thread, threads.single())
        assertEquals("glass-generate", threads.single().name)
        controller.pause().stop().destroy()
        idleUntil("the session to close") { DemoController.openSessions.get() == 0 }
    }

    @Test
    fun denseTwinSwitchLoadsTheTwinAndTheSpeedUpIsShown() {
        val controller = launch()
        val activity = controller.get()
        activity.dense.isChecked = true
        activity.press()
        assertEquals(app.getAsJsonObject("dense").get("text").asString, activity.output.text.toString())
        assertTrue(activity.info.text.toString(), activity.info.text.contains("onnx: dense twin k=256/256"))
        assertTrue(activity.stats.text.toString(), activity.stats.text.contains("kept 100% (256/256)"))
        assertFalse(activity.stats.text.contains("speed-up"))
        activity.dense.isChecked = false
        activity.press()
        assertEquals(app.getAsJsonObject("sparse").get("text").asString, activity.output.text.toString())
        assertTrue(activity.stats.text.toString(), Regex("""speed-up vs dense twin [0-9.]+x""").containsMatchIn(activity.stats.text))
        assertEquals("one model open at a time", 1, DemoController.openSessions.get())
        controller.pause().stop().destroy()
        idleUntil("the session to close") { DemoController.openSessions.get() == 0 }
    }

    /** The backend comes from the manifest: a .pte runs on the ExecuTorch JNI bridge (android_demo/jni). */
    @Test
    fun executorchArtifactRunsThroughTheJniBridge() {
        val host = Path.of(System.getProperty("glass.etHost", "../jni/build/host.properties"))
        assertTrue("$host missing: build the bridge first (bash android_demo/jni/build.sh)", Files.isRegularFile(host))
        java.util.Properties().apply { Files.newBufferedReader(host).use { load(it) } }
            .forEach { (k, v) -> System.setProperty(k.toString(), v.toString()) }
        val et = JsonParser.parseString(Files.readString(golden.resolve("executorch.json"))).asJsonObject
        val record = et.getAsJsonArray("records")[0].asJsonObject
        val tokens = record.getAsJsonArray("tokens").map { it.asLong }
        assertFalse("the golden run has no EOS, so the app (which stops at EOS) must print all of it", 2L in tokens)
        val controller = launch(golden.resolve("executorch").toString(), et.get("new_tokens").asInt)
        val activity = controller.get()
        activity.prompt.setText(record.get("prompt").asString)
        activity.press()
        assertEquals(activity.message.text.toString(), View.GONE, activity.message.visibility)
        assertEquals(record.get("text").asString, activity.output.text.toString())
        assertTrue(activity.info.text.toString(), activity.info.text.contains("executorch: griffin density=0.5"))
        assertTrue(activity.info.text.toString(),
            Regex("""executorch \(JNI bridge, [0-9]+ threads\) · op: native glass kernels \(glass::gather_ffn.out\)""").containsMatchIn(activity.info.text))
        assertTrue(activity.stats.text.toString(), Regex("""prefill [0-9.]+ ms · decode [0-9.]+ tokens/s · kept 50% \(128/256\)""")
            .containsMatchIn(activity.stats.text))
        controller.pause().stop().destroy()
        idleUntil("the session to close") { DemoController.openSessions.get() == 0 }
    }

    @Test
    fun wrongDirectoryShowsAMessage() {
        val activity = launch(golden.resolve("no-such-artifact").toString()).get()
        activity.press()
        assertEquals(View.VISIBLE, activity.message.visibility)
        assertTrue(activity.message.text.toString(), activity.message.text.contains("does not exist"))
        assertEquals("", activity.output.text.toString())
        // a directory that is not an artifact
        activity.directory.setText(golden.toString())
        activity.press()
        assertTrue(activity.message.text.toString(), activity.message.text.contains("has no glass.json"))
        assertEquals(0, DemoController.openSessions.get())
    }

    @Test
    fun qnnArtifactWithoutTheQnnProviderShowsWhatToInstall() {
        // The app opens a qnn artifact on the HTP; the host's onnxruntime jar has no QNN provider, a phone's
        // onnxruntime-android-qnn does (core's QnnGoldenTest runs the same engine on the CPU).
        val activity = launch(golden.resolve("qnn").toString()).get()
        activity.press()
        idleUntil("the message") { activity.message.visibility == View.VISIBLE }
        assertTrue(activity.message.text.toString(), activity.message.text.contains("no QNN execution provider"))
        assertTrue(activity.message.text.toString(), activity.message.text.contains("onnxruntime-android-qnn"))
        assertEquals("", activity.output.text.toString())
        assertEquals(0, DemoController.openSessions.get())
    }

    @Test
    fun emptyPromptOrDirectoryShowsAMessage() {
        val activity = launch().get()
        activity.prompt.setText("   ")
        activity.generate.performClick()
        shadowOf(Looper.getMainLooper()).idle()
        assertTrue(activity.message.text.toString(), activity.message.text.contains("the prompt is empty"))
        assertTrue("nothing started", activity.generate.isEnabled && !activity.stop.isEnabled)
        activity.prompt.setText("Hi")
        activity.directory.setText("")
        activity.generate.performClick()
        shadowOf(Looper.getMainLooper()).idle()
        assertTrue(activity.message.text.toString(), activity.message.text.contains("directory is empty"))
        assertEquals(0, DemoController.openSessions.get())
    }

    @Test
    fun stopEndsTheGenerationEarly() {
        DemoController.backendFactory = { m, dir, n -> Watched(DemoController.openBackend(m, dir, n), decodeDelayMs = 40) {} }
        val controller = launch()
        val activity = controller.get()
        activity.output.addTextChangedListener(object : TextWatcher {
            override fun beforeTextChanged(s: CharSequence?, start: Int, count: Int, after: Int) {}
            override fun onTextChanged(s: CharSequence?, start: Int, before: Int, count: Int) {}
            override fun afterTextChanged(s: Editable?) { if (!s.isNullOrEmpty() && activity.stop.isEnabled) activity.stop.performClick() }
        })
        activity.press()
        val full = app.getAsJsonObject("sparse").get("text").asString
        val shown = activity.output.text.toString()
        assertTrue(activity.stats.text.toString(), activity.stats.text.endsWith("· stopped"))
        assertTrue("'$shown' is a proper prefix of '$full'", shown.length < full.length && full.startsWith(shown))
        controller.pause().stop().destroy()
        idleUntil("the session to close") { DemoController.openSessions.get() == 0 }
    }

    @Test
    fun rotatingOrLeavingTheScreenClosesTheSession() {
        DemoController.backendFactory = { m, dir, n -> Watched(DemoController.openBackend(m, dir, n), decodeDelayMs = 40) {} }
        val controller = launch()
        val first = controller.get()
        first.generate.performClick()
        idleUntil("the session to open") { DemoController.openSessions.get() == 1 }
        controller.recreate() // a rotation: onDestroy, then a new activity
        val second = controller.get()
        assertNotEquals(first, second)
        idleUntil("the first screen's session to close") { DemoController.openSessions.get() == 0 }
        assertTrue(first.isDestroyed)
        DemoController.backendFactory = DemoController::openBackend
        second.press()
        assertEquals(app.getAsJsonObject("sparse").get("text").asString, second.output.text.toString())
        assertEquals(1, DemoController.openSessions.get())
        controller.pause().stop().destroy() // leaving the app
        idleUntil("the second screen's session to close") { DemoController.openSessions.get() == 0 }
    }

    /** A backend wrapped to record the calling thread and, optionally, to slow decode down. */
    private class Watched(val inner: Backend, val decodeDelayMs: Long = 0, val onCall: () -> Unit) : Backend by inner {
        override fun prefill(ids: LongArray): Backend.Prefill { onCall(); return inner.prefill(ids) }
        override fun decode(token: Long, position: Long, indices: Array<LongArray>): FloatArray {
            onCall()
            if (decodeDelayMs > 0) Thread.sleep(decodeDelayMs)
            return inner.decode(token, position, indices)
        }
    }
}
