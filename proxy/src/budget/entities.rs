//! Budgets and credit accounts as config-store entities and admin API kinds.

use serde_json::Value;
use tollgate_schemas::budgets::Scope;
pub use tollgate_schemas::budgets::{Budget, CreditAccount, Invalid};

use crate::admin::errors::AdminError;
use crate::admin::kinds::AdminEntity;
use crate::entities::{ApiKey, FieldError, Model};
use crate::store::{ConfigKind, ConfigStore, Entity};

fn field(e: Invalid) -> FieldError {
    FieldError::new(e.field, e.message)
}

impl Entity for Budget {
    const KIND: ConfigKind = ConfigKind::Budgets;

    fn id(&self) -> &str {
        &self.id
    }

    fn prepare(&mut self) {}

    fn check(&self) -> Result<(), FieldError> {
        self.validate().map_err(field)
    }
}

impl Entity for CreditAccount {
    const KIND: ConfigKind = ConfigKind::CreditAccounts;

    fn id(&self) -> &str {
        &self.id
    }

    fn prepare(&mut self) {}

    fn check(&self) -> Result<(), FieldError> {
        self.validate().map_err(field)
    }
}

fn to_value<T: serde::Serialize>(e: &T) -> Value {
    serde_json::to_value(e).unwrap_or(Value::Null)
}

impl AdminEntity for Budget {
    const ID_FIELD: &'static str = "id";

    fn view(&self) -> Value {
        to_value(self)
    }

    fn fill(&mut self, _existing: Option<&Self>) -> Result<Option<String>, AdminError> {
        Ok(None)
    }

    async fn verify(&self, store: &ConfigStore) -> Result<(), AdminError> {
        let missing = match self.scope {
            Scope::Key => !store.exists::<ApiKey>(&self.scope_id).await?,
            Scope::Model => !store.exists::<Model>(&self.scope_id).await?,
            Scope::Team | Scope::Account | Scope::Global => false,
        };
        if missing {
            return Err(AdminError::UnknownReference {
                param: "scope_id".into(),
                message: format!(
                    "`scope_id`: {} `{}` does not exist. Create it first or fix the id.",
                    self.scope.as_str(),
                    self.scope_id
                ),
            });
        }
        Ok(())
    }
}

impl AdminEntity for CreditAccount {
    const ID_FIELD: &'static str = "id";

    fn view(&self) -> Value {
        to_value(self)
    }

    /// `since_ms` defaults to the stored value, else to now (whole seconds): usage from then
    /// on debits the balance.
    fn fill(&mut self, existing: Option<&Self>) -> Result<Option<String>, AdminError> {
        if self.since_ms.is_none() {
            self.since_ms = existing
                .and_then(|e| e.since_ms)
                .or_else(|| Some(super::now_ms() / 1000 * 1000));
        }
        Ok(None)
    }

    async fn verify(&self, _store: &ConfigStore) -> Result<(), AdminError> {
        Ok(())
    }
}
