//! The 12 intents: the contract between the model file and the edge.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// What the shopper wants from the store right now (`models/data/GUIDELINES.md`).
///
/// The discriminant is the model's output index: the order is part of the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Intent {
    /// Where an order, delivery or pickup is; cancelling or changing one.
    OrderStatus = 0,
    /// Returning, exchanging, a refund for goods given back.
    ReturnRefund = 1,
    /// Whether an item/size/colour is in stock; reserving one.
    ProductAvailability = 2,
    /// What a product is like: material, size guide, specs, warranty.
    ProductInfo = 3,
    /// Prices, discounts, coupons, price match, price-difference refunds.
    PricePromotion = 4,
    /// Opening hours, address, parking, facilities, where things are in the store.
    StoreInfo = 5,
    /// How to pay, failed or double charges, invoices, gift cards used to pay.
    Payment = 6,
    /// Loyalty card, points, member prices and benefits.
    Membership = 7,
    /// Dissatisfaction the store should hear about.
    Complaint = 8,
    /// A real person, a manager, a call; frustration with the bot.
    HumanAgent = 9,
    /// Only a greeting, thanks, goodbye or small talk.
    Greeting = 10,
    /// Anything else.
    Other = 11,
}

impl Intent {
    /// Every intent, in the model's output order.
    pub const ALL: [Intent; 12] = [
        Intent::OrderStatus,
        Intent::ReturnRefund,
        Intent::ProductAvailability,
        Intent::ProductInfo,
        Intent::PricePromotion,
        Intent::StoreInfo,
        Intent::Payment,
        Intent::Membership,
        Intent::Complaint,
        Intent::HumanAgent,
        Intent::Greeting,
        Intent::Other,
    ];

    /// The label as written in the data and the model's `labels` metadata.
    pub fn as_str(self) -> &'static str {
        match self {
            Intent::OrderStatus => "order_status",
            Intent::ReturnRefund => "return_refund",
            Intent::ProductAvailability => "product_availability",
            Intent::ProductInfo => "product_info",
            Intent::PricePromotion => "price_promotion",
            Intent::StoreInfo => "store_info",
            Intent::Payment => "payment",
            Intent::Membership => "membership",
            Intent::Complaint => "complaint",
            Intent::HumanAgent => "human_agent",
            Intent::Greeting => "greeting",
            Intent::Other => "other",
        }
    }

    /// The model's output index of this intent.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The intent at output index `i` (`None` past 11).
    pub fn from_index(i: usize) -> Option<Intent> {
        Intent::ALL.get(i).copied()
    }
}

impl fmt::Display for Intent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A label that is not one of the 12.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown intent label {0:?}")]
pub struct UnknownIntent(pub String);

impl FromStr for Intent {
    type Err = UnknownIntent;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Intent::ALL
            .into_iter()
            .find(|i| i.as_str() == s)
            .ok_or_else(|| UnknownIntent(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        for (i, intent) in Intent::ALL.into_iter().enumerate() {
            assert_eq!(intent.index(), i);
            assert_eq!(Intent::from_index(i), Some(intent));
            assert_eq!(intent.as_str().parse::<Intent>(), Ok(intent));
            let json = serde_json::to_string(&intent).unwrap();
            assert_eq!(json, format!("\"{}\"", intent.as_str()));
        }
        assert!("OrderStatus".parse::<Intent>().is_err());
        assert_eq!(Intent::from_index(12), None);
    }
}
