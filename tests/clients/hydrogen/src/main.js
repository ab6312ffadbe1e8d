// The whole Hydrogen app (login, session, room list, rooms), as hydrogen-web's own entry point
// mounts it. The homeserver comes from the page's `?hs=` parameter.
import { FeatureSet, Platform, RootViewModel, createNavigation, createRouter } from "hydrogen-view-sdk";
import downloadSandboxPath from "hydrogen-view-sdk/download-sandbox.html?url";
import workerPath from "hydrogen-view-sdk/main.js?url";
import olmWasmPath from "@matrix-org/olm/olm.wasm?url";
import olmJsPath from "@matrix-org/olm/olm.js?url";
import olmLegacyJsPath from "@matrix-org/olm/olm_legacy.js?url";
import "hydrogen-view-sdk/assets/theme-element-light.css";

const assetPaths = {
    downloadSandbox: downloadSandboxPath,
    worker: workerPath,
    olm: { wasm: olmWasmPath, legacyBundle: olmLegacyJsPath, wasmBundle: olmJsPath },
    serviceWorker: "sw.js",
};

async function main() {
    const container = document.querySelector("#app");
    const hs = new URLSearchParams(location.search).get("hs");
    const config = { defaultHomeServer: hs };
    const platform = new Platform({ container, assetPaths, config, options: { development: false } });
    const navigation = createNavigation();
    platform.setNavigation(navigation);
    await platform.init();
    const urlRouter = createRouter({ navigation, history: platform.history });
    urlRouter.attach();
    const features = await FeatureSet.load(platform.settingsStorage);
    const vm = new RootViewModel({ platform, navigation, urlRouter, logger: platform.logger, features });
    await vm.load();
    platform.createAndMountRootView(vm);
}

main().catch((e) => {
    document.body.setAttribute("data-error", String(e && e.stack || e));
    console.error(e);
});
