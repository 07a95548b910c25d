package dev.glassexport.demo

import java.util.TreeMap
import javax.annotation.Priority
import javax.inject.Inject
import org.robolectric.internal.dependency.DependencyResolver
import org.robolectric.pluginapi.Sdk
import org.robolectric.plugins.DefaultSdkProvider

/**
 * Robolectric knows only API 34 here: the tests run on it, and without this plugin Robolectric also
 * fetches its newest framework jar (API 35, 200 MB) to read "compile-time" resources no test uses.
 * Registered in META-INF/services/org.robolectric.pluginapi.SdkProvider.
 */
@Priority(1)
class Api34Only @Inject constructor(resolver: DependencyResolver) : DefaultSdkProvider(resolver) {
    override fun populateSdks(knownSdks: TreeMap<Int, Sdk>) {
        super.populateSdks(knownSdks)
        knownSdks.keys.retainAll(setOf(API))
    }

    companion object {
        const val API = 34
    }
}
