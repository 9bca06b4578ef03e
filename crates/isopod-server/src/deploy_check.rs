//! The check every bundle passes before anything serves it: evaluated once
//! in a scratch isolate, so a broken bundle is refused at deploy (or at
//! start) with its `file:line:column`, and the version already serving
//! keeps serving.

use isopod_runtime::{AppConfig, Bundle, Instance, InstanceError};

/// Evaluates a bundle in a scratch isolate on a scratch thread, so a broken
/// bundle is refused before anything serves it. Top-level code runs under
/// the app's startup CPU budget and heap limit, as in every instance: past
/// them the process's watchdog terminates it (it only signals the isolate)
/// and the bundle is refused.
pub(crate) fn check_bundle(config: &AppConfig, bundle: &Bundle) -> Result<(), InstanceError> {
    let config = config.clone();
    let bundle = bundle.clone();
    let outcome = std::thread::scope(|scope| {
        scope
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a current-thread runtime builds");
                let local = tokio::task::LocalSet::new();
                local.block_on(&runtime, async {
                    let mut instance = Instance::blank(&config)?;
                    instance.load(&bundle, &config).await
                })
            })
            .join()
    });
    outcome.unwrap_or_else(|_| Err(InstanceError::Bundle("checking the bundle panicked".into())))
}
