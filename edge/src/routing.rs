//! Who gets a chat: a pure function over the online staff and their load.
//!
//! Kept free of I/O so the policy can be read and tested on its own (and, later, replaced
//! live). The writer thread gathers the candidates and applies the answer as an `Assign`
//! event.

use aisle_sync::StaffId;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub id: StaffId,
    /// Chats currently held (assigned, transferred or reopened to them).
    pub open_chats: u32,
    pub capacity: u32,
    /// When they were last given a chat (0 = never): ties go to whoever waited longest.
    pub last_assigned_at_ms: u64,
}

impl Candidate {
    fn has_room(&self) -> bool {
        self.open_chats < self.capacity
    }
}

/// Picks the agent for a chat. `preferred` (the staff member who served this customer last)
/// wins when they are among the candidates and have room; otherwise the least-loaded
/// candidate with room, ties by longest wait then id (so the choice is deterministic).
pub fn pick(candidates: &[Candidate], preferred: Option<StaffId>) -> Option<StaffId> {
    if let Some(preferred) = preferred
        && candidates.iter().any(|c| c.id == preferred && c.has_room())
    {
        return Some(preferred);
    }
    candidates
        .iter()
        .filter(|c| c.has_room())
        .min_by_key(|c| (c.open_chats, c.last_assigned_at_ms, c.id))
        .map(|c| c.id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate(open_chats: u32, capacity: u32, last: u64) -> Candidate {
        Candidate {
            id: StaffId::new(),
            open_chats,
            capacity,
            last_assigned_at_ms: last,
        }
    }

    #[test]
    fn least_loaded_with_room_wins() {
        let busy = candidate(3, 8, 0);
        let idle = candidate(1, 8, 5);
        let full = candidate(0, 0, 0);
        assert_eq!(pick(&[busy, idle.clone(), full], None), Some(idle.id));
    }

    #[test]
    fn tie_goes_to_longest_wait() {
        let recent = candidate(1, 8, 100);
        let waiting = candidate(1, 8, 10);
        assert_eq!(pick(&[recent, waiting.clone()], None), Some(waiting.id));
    }

    #[test]
    fn returning_customer_goes_back_when_possible() {
        let previous = candidate(5, 8, 0);
        let idle = candidate(0, 8, 0);
        assert_eq!(
            pick(&[previous.clone(), idle.clone()], Some(previous.id)),
            Some(previous.id)
        );
        let previous_full = Candidate {
            open_chats: 8,
            ..previous
        };
        assert_eq!(
            pick(
                &[previous_full.clone(), idle.clone()],
                Some(previous_full.id)
            ),
            Some(idle.id)
        );
        // Offline (not a candidate): someone else.
        assert_eq!(
            pick(std::slice::from_ref(&idle), Some(StaffId::new())),
            Some(idle.id)
        );
    }

    #[test]
    fn nobody_with_room() {
        assert_eq!(pick(&[candidate(2, 2, 0)], None), None);
        assert_eq!(pick(&[], None), None);
    }
}
