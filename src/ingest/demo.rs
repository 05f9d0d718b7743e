//! The demo source: a generator of realistic mail-server traffic (placeholder until written).

use super::Source;
use crate::hub::Hub;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// Generates demo events at a fixed rate.
pub struct DemoSource {
    rate: u32,
}

impl DemoSource {
    /// A source producing `rate` events per second.
    pub fn new(rate: u32) -> DemoSource {
        DemoSource { rate }
    }
}

impl Source for DemoSource {
    fn name(&self) -> &'static str {
        "demo"
    }
    fn run(self: Box<Self>, _hub: Arc<Hub>) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        let _ = self.rate;
        Box::pin(async {})
    }
}
